"""USSuperRes: lateral super-resolution of ultrasound images.

A loaded image or recording (frames along K, beam lines along I) gets F times more beam lines in a
``deepultrasound superres`` process started with Slicer's Python (progress and Cancel), with a
network or a classical interpolation; the result lies on the engine's fine grid (same origin,
lateral spacing divided by F) and is shown beside the input in two linked slice views.

Batch use without the GUI goes through :class:`USSuperResLogic`::

    logic = USSuperResLogic()
    logic.process(inputVolume, outputVolume, 4, SuperResolutionMethod("cubic"))
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.engineJob import BackgroundJobLogic
from DeepUltrasoundCommonLib.moduleWidget import BackgroundJobWidget
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from USSuperResLib import (
    COMPARE_VIEWS,
    METHODS,
    SuperResolutionJob,
    SuperResolutionMethod,
    showSideBySide,
    superResolvedGeometry,
)

#
# USSuperRes
#


class USSuperRes(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Ultrasound Super-Resolution")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["DeepUltrasoundCommon"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Lateral super-resolution: more beam lines from fewer, with SRResNet/SRGAN generators trained on the "
            "ultrasound degradation model (decimation across beam lines only), or cubic/linear interpolation. The "
            "axial axis is kept. Choose an image (one frame per slice; colour images are converted to grey), the "
            "factor and the method, and press Apply; Compare shows input and output side by side. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#ussuperres">Documentation</a>.'
        )
        self.parent.acknowledgementText = _("Based on Liang et al., single-image super-resolution of medical images.")


#
# USSuperResParameterNode
#


@parameterNodeWrapper
class USSuperResParameterNode:
    """
    inputVolume - low-resolution frames (axial along J, beam lines along I); scalar or colour.
    outputVolume - output: frames with factor x more beam lines on the engine's fine grid.
    factor - lateral upsampling factor.
    method - "network" (the model below) or a classical interpolation across lines.
    modelName - model bundle chosen in the model list ("": the engine's model of the factor).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    factor: Annotated[int, Choice([2, 4, 8])] = 4
    method: Annotated[str, Choice(list(METHODS))] = "network"
    modelName: str = ""


#
# USSuperResWidget
#


class USSuperResWidget(BackgroundJobWidget):
    bundleTask = "superres"
    jobTitle = _("Super-resolution")

    def setup(self) -> None:
        super().setup()
        if self.logic is None:  # an unsupported Slicer: the panel shows why
            return
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)

    def createLogic(self):
        return USSuperResLogic()

    def updateGui(self, caller=None, event=None) -> None:
        super().updateGui(caller, event)
        if self._parameterNode:
            self.ui.modelComboBox.enabled = self._parameterNode.method == "network"

    def missingInputs(self, parameterNode: USSuperResParameterNode) -> str:
        if not parameterNode.inputVolume:
            return _("Select an input image")
        return ""

    def showJobResult(self, job) -> None:
        if self._parameterNode:  # None while the module is not shown: the result waits in the output volume
            self.compare()

    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the comparison."), waitCursor=True):
            self.compare()

    def compare(self) -> None:
        """Input and output side by side in linked slice views, fitted to the images."""
        showSideBySide(self._parameterNode.inputVolume, self._parameterNode.outputVolume)
        slicer.util.resetSliceViews()


#
# USSuperResLogic
#


class USSuperResLogic(ScriptedLoadableModuleLogic, BackgroundJobLogic):
    """Lateral super-resolution on MRML volumes; runs without the widget (scripts, tests).

    Closing the scene cancels a running super-resolution.

    Attributes:
        job: the super-resolution running in the background, or None.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        BackgroundJobLogic.__init__(self)

    def getParameterNode(self) -> USSuperResParameterNode:
        return USSuperResParameterNode(super().getParameterNode())

    def process(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        outputVolume: vtkMRMLScalarVolumeNode,
        factor: int,
        method: SuperResolutionMethod,
        waitForCompletion: bool = True,
    ) -> str:
        """Upsample ``inputVolume`` ``factor`` times laterally into ``outputVolume``; a one-line summary.

        Runs in a background process (:attr:`job`): without ``waitForCompletion`` this returns "" at
        once; poll the job and call :meth:`finish` when it has ended, or :meth:`cancel`.

        Raises:
            ValueError: no input voxels or no output volume; the engine refused the input or failed
                (the message holds its last output lines).
        """
        return self.runJob(lambda: SuperResolutionJob(inputVolume, outputVolume, factor, method), waitForCompletion)

    def processParameterNode(self, parameterNode: USSuperResParameterNode, waitForCompletion: bool = True) -> str:
        """:meth:`process` on the parameter node's inputs (creates the output volume when none is selected)."""
        inputVolume = parameterNode.inputVolume
        if inputVolume is not None and parameterNode.outputVolume is None:
            name = f"{inputVolume.GetName()} x{parameterNode.factor}"
            parameterNode.outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        method = SuperResolutionMethod(parameterNode.method, parameterNode.modelName)
        return self.process(inputVolume, parameterNode.outputVolume, parameterNode.factor, method, waitForCompletion)


#
# USSuperResTest
#


class USSuperResTest(ScriptedLoadableModuleTest):
    """Cubic super-resolution of a lateral ramp (known answer) and the side-by-side view, in the application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CubicSuperResolutionOfARamp()

    def test_CubicSuperResolutionOfARamp(self):
        """Cubic interpolation reproduces a ramp across lines; the output lies on the x4 grid, input beside it."""
        factor, width = 4, 16
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.4, 0.05, 1.0), origin=(-3.0, 0.0, 0.0))
        inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LowRes")
        ramp = np.broadcast_to(np.arange(width, dtype=np.float32), (2, 50, width))
        arrayToVolume(np.ascontiguousarray(ramp), inputVolume, geometry)
        outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "HighRes")

        summary = USSuperResLogic().process(
            inputVolume, outputVolume, factor, SuperResolutionMethod("cubic", "", "cpu")
        )
        self.assertIn("2 frame(s) of 50 x 16 -> 50 x 64", summary)
        upsampled, outputGeometry = volumeToArray(outputVolume)
        self.assertTrue(outputGeometry.isClose(superResolvedGeometry(geometry, factor)))
        np.testing.assert_allclose(outputGeometry.origin, geometry.origin)
        np.testing.assert_allclose(upsampled[..., ::factor], ramp, atol=1e-5)  # input line k is output line k F
        # Lines between input lines 1 and W-2 (the cubic kernel's neighbours are all inside): the ramp itself.
        inside = np.arange(factor, (width - 2) * factor + 1)
        np.testing.assert_allclose(
            upsampled[..., inside], np.broadcast_to(inside / factor, (2, 50, inside.size)), atol=1e-4
        )

        showSideBySide(inputVolume, outputVolume)
        layout = slicer.app.layoutManager()
        self.assertEqual(layout.layout, slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, volume in zip(COMPARE_VIEWS, (inputVolume, outputVolume)):
            composite = layout.sliceWidget(viewName).mrmlSliceCompositeNode()
            self.assertEqual(composite.GetBackgroundVolumeID(), volume.GetID())
        self.delayDisplay("USSuperRes test passed")
