"""USSuperRes: lateral super-resolution of ultrasound images."""

from typing import Annotated

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from USSuperResLib import superResolutionInput, superResolvedGeometry, writeSuperResolved

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
            "ultrasound degradation model (decimation across beam lines only). The axial axis is kept. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#ussuperres">Documentation</a>.'
        )
        self.parent.acknowledgementText = _("Based on Liang et al., single-image super-resolution of medical images.")
        # Hidden until its engine (deepultrasound.superres) exists: shown, it would offer a multi-GB
        # install and then only report that the engine is not available.
        self.parent.hidden = True


#
# USSuperResParameterNode
#


@parameterNodeWrapper
class USSuperResParameterNode:
    """
    inputVolume - low-resolution frames (axial along J, beam lines along I).
    outputVolume - output: frames with factor x more beam lines over the same lateral extent.
    factor - lateral upsampling factor.
    modelName - model bundle chosen in the model list.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    factor: Annotated[int, WithinRange(2, 8)] = 4
    modelName: str = ""


#
# USSuperResWidget
#


class USSuperResWidget(DeepUltrasoundWidget):
    bundleTask = "superres"

    def createLogic(self):
        return USSuperResLogic()

    def missingInputs(self, parameterNode: USSuperResParameterNode) -> str:
        if not parameterNode.inputVolume:
            return _("Select an input image")
        if not parameterNode.outputVolume:
            return _("Select or create an output image volume")
        return ""

    def apply(self, parameterNode: USSuperResParameterNode) -> str:
        return self.logic.process(
            parameterNode.inputVolume, parameterNode.outputVolume, parameterNode.factor, parameterNode.modelName
        )


#
# USSuperResLogic
#


class USSuperResLogic(ScriptedLoadableModuleLogic):
    """Lateral super-resolution on MRML volumes; runs without the widget (scripts, tests)."""

    def getParameterNode(self) -> USSuperResParameterNode:
        return USSuperResParameterNode(super().getParameterNode())

    def process(
        self, inputVolume: vtkMRMLScalarVolumeNode, outputVolume: vtkMRMLScalarVolumeNode, factor: int, modelName: str
    ) -> str:
        """Check the input frames, then upsample them ``factor`` times laterally into ``outputVolume``.

        Raises:
            ValueError: invalid input, no output or model, or no super-resolution network in this version.
        """
        frames, _geometry = superResolutionInput(inputVolume)
        if outputVolume is None:
            raise ValueError("Select or create an output image volume")
        if not modelName:
            raise ValueError("Choose a model bundle: press 'Refresh models' to list the installed ones")
        raise ValueError(
            f"Super-resolution x{factor} of {frames.shape[0]} frame(s) of {frames.shape[1]} x {frames.shape[2]} with "
            f"model '{modelName}' is not available yet in this version of DeepUltrasound"
        )


#
# USSuperResTest
#


class USSuperResTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_OutputGridKeepsLateralExtent()

    def test_OutputGridKeepsLateralExtent(self):
        """A x4 output has 4 times the beam lines at a quarter of the spacing, with the same outer edges."""
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.4, 0.05, 1.0), origin=(-3.0, 0.0, 0.0))
        inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LowRes")
        arrayToVolume(np.ones((1, 50, 16), dtype=np.float32), inputVolume, geometry)
        frames, inputGeometry = superResolutionInput(inputVolume)

        outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "HighRes")
        writeSuperResolved(np.repeat(frames, 4, axis=2), outputVolume, inputGeometry, factor=4)
        upsampled, outputGeometry = volumeToArray(outputVolume)
        self.assertEqual(upsampled.shape, (1, 50, 64))
        np.testing.assert_allclose(outputGeometry.spacing, (0.1, 0.05, 1.0))
        firstEdge = outputGeometry.origin[0] - outputGeometry.spacing[0] / 2
        self.assertAlmostEqual(firstEdge, -3.0 - 0.2)
        self.assertTrue(superResolvedGeometry(inputGeometry, 1).isClose(inputGeometry))
        self.delayDisplay("USSuperRes test passed")
