"""USSynth: ultrasound images synthesised from anatomy label maps.

A label map or segmentation (one 2-D label frame per slice) conditions a label-conditioned (SPADE) diffusion
model in a ``deepultrasound synth`` process started with Slicer's Python (progress and Cancel); the N samples
of each frame lie on the label map's grid: the output volume holds sample 0, and several samples are browsed
as a Sequence whose proxy is the output volume (see ``USSynthLib.samples``).

Batch use without the GUI goes through :class:`USSynthLogic`::

    logic = USSynthLogic()
    logic.process(labelMap, outputVolume, SynthesisSettings(samples=4, seed=1))
"""

from __future__ import annotations

from typing import Annotated, Union

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.engineJob import BackgroundJobLogic
from DeepUltrasoundCommonLib.moduleWidget import BackgroundJobWidget
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from USSynthLib import PROBES, SynthesisJob, SynthesisSettings, samplesBrowsing, storeSamples, synthesisInput

#
# USSynth
#


class USSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Ultrasound Synthesis")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["DeepUltrasoundCommon"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Synthetic ultrasound images from anatomy label maps with a label-conditioned (SPADE) diffusion "
            "model, for building training sets for segmentation. Choose a label map or segmentation (one frame per "
            "slice, 0 is background), the number of samples and the model, and press Apply. Every sample lies on "
            "the label map's grid; several samples are browsed with the Sequences toolbar. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#ussynth">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on Stojanovski et al., 'Echo from noise' (2023) and Dominguez et al., 'Diffusion as sound "
            "propagation' (2024)."
        )


#
# USSynthParameterNode
#


@parameterNodeWrapper
class USSynthParameterNode:
    """
    labels - anatomy labels: a label map or a segmentation (its label values), one 2-D frame per slice.
    syntheticVolume - output: sample 0 on the label map's grid (the proxy of the samples' sequence when several).
    samples - images drawn per label frame.
    samplingSteps - denoising steps of the sampler; 0: the model's.
    guidance - classifier-free guidance weight; 0: the model's.
    seed - random seed of the sampler (same seed, labels, model and settings: same images).
    probe - "linear" or "sector" B-map probe (the Default model: the installed one of it); "default": the model's.
    modelName - model bundle chosen in the model list ("": the engine's default synthesis model).
    """

    labels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    syntheticVolume: vtkMRMLScalarVolumeNode
    samples: Annotated[int, WithinRange(1, 64)] = 1
    samplingSteps: Annotated[int, WithinRange(0, 1000)] = 0
    guidance: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    probe: Annotated[str, Choice(list(PROBES))] = "default"
    modelName: str = ""


#
# USSynthWidget
#


class USSynthWidget(BackgroundJobWidget):
    bundleTask = "synthesis"
    jobTitle = _("Synthesis")

    def createLogic(self):
        return USSynthLogic()

    def missingInputs(self, parameterNode: USSynthParameterNode) -> str:
        if not parameterNode.labels:
            return _("Select a label map or a segmentation")
        return ""

    def showJobResult(self, job) -> None:
        """Sample 0 in the slice views over a label map input; the samples' browser in the Sequences toolbar."""
        labelMap = job.labelsNode if job.labelsNode.IsA("vtkMRMLLabelMapVolumeNode") else False
        slicer.util.setSliceViewerLayers(background=job.outputVolume, label=labelMap, fit=True)
        browsing = samplesBrowsing(job.outputVolume)
        if browsing is not None:
            slicer.modules.sequences.setToolBarActiveBrowserNode(browsing[0])


#
# USSynthLogic
#


class USSynthLogic(ScriptedLoadableModuleLogic, BackgroundJobLogic):
    """Label-conditioned synthesis on MRML nodes; runs without the widget (scripts, tests).

    Closing the scene cancels a running synthesis.

    Attributes:
        job: the synthesis running in the background, or None.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        BackgroundJobLogic.__init__(self)

    def getParameterNode(self) -> USSynthParameterNode:
        return USSynthParameterNode(super().getParameterNode())

    def process(
        self,
        labelsNode: slicer.vtkMRMLNode,
        syntheticVolume: vtkMRMLScalarVolumeNode,
        settings: SynthesisSettings,
        waitForCompletion: bool = True,
    ) -> str:
        """Synthesise ``settings.samples`` images per label frame of ``labelsNode`` into ``syntheticVolume``.

        Runs in a background process (:attr:`job`): without ``waitForCompletion`` this returns "" at once;
        poll the job and call :meth:`finish` when it has ended, or :meth:`cancel`.

        Raises:
            ValueError: no labels, only background, no output volume; the engine refused the input or failed
                (the message holds its last output lines, e.g. that no synthesis model is installed).
        """
        return self.runJob(lambda: SynthesisJob(labelsNode, syntheticVolume, settings), waitForCompletion)

    def processParameterNode(self, parameterNode: USSynthParameterNode, waitForCompletion: bool = True) -> str:
        """:meth:`process` on the parameter node's inputs (creates the output volume when none is selected)."""
        labelsNode = parameterNode.labels
        if labelsNode is not None and parameterNode.syntheticVolume is None:
            name = f"{labelsNode.GetName()} synthetic"
            parameterNode.syntheticVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        return self.process(
            labelsNode,
            parameterNode.syntheticVolume,
            SynthesisSettings.fromParameterNode(parameterNode),
            waitForCompletion,
        )


#
# USSynthTest
#


class USSynthTest(ScriptedLoadableModuleTest):
    """Labels from a segmentation and samples browsed on the label grid, in the application (no model needed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentationSamplesBrowsedOnTheLabelGrid()

    def test_SegmentationSamplesBrowsedOnTheLabelGrid(self):
        """A segmentation keeps its label values; three samples are browsed in the output volume on that grid."""
        labels = np.zeros((2, 40, 30), dtype=np.uint8)
        labels[:, 10:20, 5:25] = 1
        labels[1, 25:30, 10:15] = 3
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.5, 0.5, 1.0), origin=(1.0, 2.0, 3.0))
        labelMap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Labels")
        arrayToVolume(labels, labelMap, geometry)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Anatomy")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelMap)
        self.assertTrue(
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelMap, segmentation)
        )

        readLabels, labelGeometry = synthesisInput(segmentation)
        np.testing.assert_array_equal(readLabels, labels)
        self.assertTrue(labelGeometry.isClose(geometry))

        samples = np.stack([labels * 0.1 + 0.01 * n for n in range(3)]).astype(np.float32)
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Synthetic")
        browser = storeSamples(samples, output, labelGeometry)
        browser.SetSelectedItemNumber(2)
        shown, shownGeometry = volumeToArray(output)
        np.testing.assert_allclose(shown, samples[2])
        self.assertTrue(shownGeometry.isClose(geometry))
        self.delayDisplay("USSynth test passed")
