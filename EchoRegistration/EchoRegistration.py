"""EchoRegistration: motion tracking of echocardiography sequences, labels on every frame and myocardial strain.

A sequence (the proxy volume of a Sequences browser, or a volume with one frame per slice) and the
CAMUS labels of one frame (a segmentation, or a label map) go to a ``deepultrasound track`` process
started with Slicer's Python (progress and Cancel); the labels of every frame come back as a label
sequence browsed with the frames, each frame's displacement onto the labelled frame as a sequence of
grid transforms, and the strain curves as a table and a chart shown in the plot view.

Batch use without the GUI goes through :class:`EchoRegistrationLogic`::

    logic = EchoRegistrationLogic()
    logic.process(proxyVolume, segmentation, None, TrackingMethod("farneback"))
"""

from typing import Annotated, Union

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume
from DeepUltrasoundCommonLib.moduleWidget import BackgroundJobWidget
from EchoRegistrationLib import METHODS, EchoTrackingSession, TrackingMethod
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

#
# EchoRegistration
#


class EchoRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Echo Registration")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["DeepUltrasoundCommon", "Sequences", "Segmentations", "Plots"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Motion tracking of echocardiography sequences. Choose the frames (a sequence's proxy volume, or a "
            "volume with one frame per slice), the segmentation of one frame (segments LV cavity, myocardium, "
            "left atrium, matched by name or else by order; or a label map with values 1, 2, 3) and the "
            "registration, and press Apply. The labels are propagated to every frame and browsed with the "
            "sequence; each frame's displacement onto the labelled frame is a grid transform; global longitudinal "
            "and radial strain over time are shown as a table and a plot, with the ejection fraction. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#echoregistration">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on Hasan et al., echocardiography motion tracking with anatomical and texture "
            "constraints, arXiv:2309.00831."
        )


#
# EchoRegistrationParameterNode
#


@parameterNodeWrapper
class EchoRegistrationParameterNode:
    """
    inputVolume - the frames: a sequence's proxy volume, or a volume with one frame per slice (grey or colour).
    labels - the segmentation or CAMUS label map of one frame.
    labelledFrame - that frame, from 0; -1: the frame the browser shows, or a volume's only labelled slice.
    method - "network" (the model below) or a classical registration.
    modelName - model bundle chosen in the model list ("": the engine's default model).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    labels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    labelledFrame: Annotated[int, WithinRange(-1, 99999)] = -1
    method: Annotated[str, Choice(list(METHODS))] = "network"
    modelName: str = ""


#
# EchoRegistrationWidget
#


class EchoRegistrationWidget(BackgroundJobWidget):
    bundleTask = "echo-registration"
    jobTitle = _("Tracking")

    def createLogic(self):
        return EchoRegistrationLogic()

    def updateGui(self, caller=None, event=None) -> None:
        super().updateGui(caller, event)
        if self._parameterNode:
            self.ui.modelComboBox.enabled = self._parameterNode.method == "network"

    def missingInputs(self, parameterNode: EchoRegistrationParameterNode) -> str:
        if not parameterNode.inputVolume:
            return _("Select the frames: a sequence or a volume with one frame per slice")
        if not parameterNode.labels:
            return _("Select the segmentation or label map of one frame")
        return ""

    def showJobResult(self, job) -> None:
        """The tracked labels over the frames in the slice views, the strain chart in the plot view."""
        slicer.util.setSliceViewerLayers(background=job.tracking.node, label=self.logic.labelProxy(), fit=True)
        slicer.modules.plots.logic().ShowChartInLayout(self.logic.strainChart)


#
# EchoRegistrationLogic
#


class EchoRegistrationLogic(ScriptedLoadableModuleLogic, EchoTrackingSession):
    """Echo tracking on the application's scene, driven by the module's parameter node; runs without the widget
    (scripts, tests). Everything but the parameter node is :class:`EchoRegistrationLib.EchoTrackingSession`'s."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        EchoTrackingSession.__init__(self, slicer.mrmlScene)

    def getParameterNode(self) -> EchoRegistrationParameterNode:
        return EchoRegistrationParameterNode(super().getParameterNode())

    def processParameterNode(self, parameterNode: EchoRegistrationParameterNode, waitForCompletion: bool = True) -> str:
        """:meth:`process` on the parameter node's frames, labels, labelled frame and method."""
        frame = parameterNode.labelledFrame if parameterNode.labelledFrame >= 0 else None
        method = TrackingMethod(parameterNode.method, parameterNode.modelName)
        return self.process(parameterNode.inputVolume, parameterNode.labels, frame, method, waitForCompletion)


#
# EchoRegistrationTest
#


class EchoRegistrationTest(ScriptedLoadableModuleTest):
    """Tracking of a small simulated sequence with Farneback optical flow (no model needed), in the application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrackingASimulatedSequence()

    def test_TrackingASimulatedSequence(self):
        """Labels of the first frame propagated through 4 frames, browsed with them; strain table and chart."""
        from deepultrasound.simulation.echo import EchoConfig, EchoSimulator

        simulator = EchoSimulator(EchoConfig(height=64, width=64), seed=2)
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(*simulator.sector.pixel_mm, 1.0))
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "Echo")
        sequence.SetIndexName("time")
        sequence.SetIndexUnit("s")
        staging = slicer.vtkMRMLScalarVolumeNode()
        for frame, phase in enumerate(np.linspace(0.0, simulator.config.es_phase, 4)):
            arrayToVolume(simulator.frame(float(phase)).image, staging, geometry)
            sequence.SetDataNodeAtValue(staging, f"{0.04 * frame:.2f}")
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Echo browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        browser.SetSelectedItemNumber(0)
        labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ED labels")
        arrayToVolume(simulator.labels(0.0), labels, geometry)

        logic = EchoRegistrationLogic()
        summary = logic.process(browser.GetProxyNode(sequence), labels, None, TrackingMethod("farneback"))
        self.assertIn("4 frames tracked from frame 0 (farneback)", summary)
        self.assertEqual(logic.labelSequence.GetNumberOfDataNodes(), 4)
        self.assertEqual(logic.displacementSequence.GetNumberOfDataNodes(), 4)
        self.assertTrue(browser.IsSynchronizedSequenceNodeID(logic.labelSequence.GetID()))
        tracked = slicer.util.arrayFromVolume(logic.labelSequence.GetNthDataNode(0))[0]
        np.testing.assert_array_equal(tracked, simulator.labels(0.0))
        self.assertEqual(logic.strainTable.GetNumberOfRows(), 4)
        self.assertEqual(logic.strainChart.GetNumberOfPlotSeriesNodes(), 4)  # three curves and the ED / ES marks

        slicer.modules.plots.logic().ShowChartInLayout(logic.strainChart)
        plotView = slicer.app.layoutManager().plotWidget(0).mrmlPlotViewNode()
        self.assertEqual(plotView.GetPlotChartNodeID(), logic.strainChart.GetID())
        self.delayDisplay("EchoRegistration test passed")
