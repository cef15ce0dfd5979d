"""USSynth: ultrasound images synthesised from anatomy label maps."""

from typing import Annotated

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from USSynthLib import labelSummary, synthesisInput, writeSynthesizedImages

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
            "model, for building training sets for segmentation. One image per label frame, on its grid. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#ussynth">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on Stojanovski et al., 'Echo from noise' (2023) and Dominguez et al., 'Diffusion as sound "
            "propagation' (2024)."
        )
        # Hidden until its engine (deepultrasound.synthesis) exists: shown, it would offer a multi-GB
        # install and then only report that the engine is not available.
        self.parent.hidden = True


#
# USSynthParameterNode
#


@parameterNodeWrapper
class USSynthParameterNode:
    """
    labelVolume - anatomy labels, one 2-D frame per slice (0 is background).
    syntheticVolume - output: synthetic B-mode images on the label map's grid.
    seed - random seed of the sampler (same seed, labels and model: same images).
    samplingSteps - denoising steps of the diffusion sampler.
    modelName - model bundle chosen in the model list.
    """

    labelVolume: vtkMRMLLabelMapVolumeNode
    syntheticVolume: vtkMRMLScalarVolumeNode
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    samplingSteps: Annotated[int, WithinRange(1, 1000)] = 50
    modelName: str = ""


#
# USSynthWidget
#


class USSynthWidget(DeepUltrasoundWidget):
    bundleTask = "synthesis"

    def createLogic(self):
        return USSynthLogic()

    def missingInputs(self, parameterNode: USSynthParameterNode) -> str:
        if not parameterNode.labelVolume:
            return _("Select a label map")
        if not parameterNode.syntheticVolume:
            return _("Select or create an output image volume")
        return ""

    def apply(self, parameterNode: USSynthParameterNode) -> str:
        return self.logic.process(
            parameterNode.labelVolume,
            parameterNode.syntheticVolume,
            parameterNode.seed,
            parameterNode.samplingSteps,
            parameterNode.modelName,
        )


#
# USSynthLogic
#


class USSynthLogic(ScriptedLoadableModuleLogic):
    """Label-conditioned synthesis on MRML volumes; runs without the widget (scripts, tests)."""

    def getParameterNode(self) -> USSynthParameterNode:
        return USSynthParameterNode(super().getParameterNode())

    def process(
        self,
        labelVolume: vtkMRMLLabelMapVolumeNode,
        syntheticVolume: vtkMRMLScalarVolumeNode,
        seed: int,
        samplingSteps: int,
        modelName: str,
    ) -> str:
        """Check the label map, then synthesise one image per label frame into ``syntheticVolume``.

        Raises:
            ValueError: invalid labels, no output or model, or no synthesis model in this version.
        """
        labels, _geometry = synthesisInput(labelVolume)
        if syntheticVolume is None:
            raise ValueError("Select or create an output image volume")
        if not modelName:
            raise ValueError("Choose a model bundle: press 'Refresh models' to list the installed ones")
        raise ValueError(
            f"Synthesis from {labelSummary(labels)} with model '{modelName}' (seed {seed}, {samplingSteps} steps) "
            "is not available yet in this version of DeepUltrasound"
        )


#
# USSynthTest
#


class USSynthTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LabelsInImagesOnTheirGrid()

    def test_LabelsInImagesOnTheirGrid(self):
        """Labels are read as int32 with their geometry; images are stored on the label grid."""
        labels = np.zeros((2, 40, 30), dtype=np.uint8)
        labels[:, 10:20, 5:25] = 1
        labels[1, 25:30, 10:15] = 3
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.5, 0.5, 1.0), origin=(1.0, 2.0, 3.0))
        labelVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Labels")
        arrayToVolume(labels, labelVolume, geometry)

        readLabels, labelGeometry = synthesisInput(labelVolume)
        np.testing.assert_array_equal(readLabels, labels)
        self.assertEqual(labelSummary(readLabels), "2 frame(s) of 40 x 30, labels 0, 1, 3")

        syntheticVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Synthetic")
        writeSynthesizedImages(readLabels.astype(np.float32) * 50.0, syntheticVolume, labelGeometry)
        images, imageGeometry = volumeToArray(syntheticVolume)
        self.assertEqual(images.shape, (2, 40, 30))
        self.assertTrue(imageGeometry.isClose(geometry))
        self.delayDisplay("USSynth test passed")
