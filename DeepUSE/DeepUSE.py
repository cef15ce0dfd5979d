"""DeepUSE: quasi-static strain elastography from ultrasound RF frames."""

from typing import Annotated

import numpy as np

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from DeepUSELib import framePairs, rfFramesFromVolume, writeStrainFrames

#
# DeepUSE
#


class DeepUSE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepUSE Strain Elastography")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["DeepUltrasoundCommon"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Axial strain (%) from a sequence of ultrasound RF frames, with the recurrent ReUSENet or the "
            "USENet displacement networks. The RF volume holds one frame per slice; the strain volume gets "
            "one frame per frame pair, on the same grid. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#deepuse">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on DeepUSE: R. Delaunay, Y. Hu, T. Vercauteren, 'An unsupervised learning approach to "
            "ultrasound strain elastography with spatio-temporal consistency', Phys. Med. Biol. 2021."
        )


#
# DeepUSEParameterNode
#


@parameterNodeWrapper
class DeepUSEParameterNode:
    """
    rfVolume - RF frames, one per slice (axial samples along J, beam lines along I).
    strainVolume - output: axial strain in %, one frame per frame pair.
    frameStep - strain between frames t and t + frameStep.
    modelName - model bundle chosen in the model list.
    """

    rfVolume: vtkMRMLScalarVolumeNode
    strainVolume: vtkMRMLScalarVolumeNode
    frameStep: Annotated[int, WithinRange(1, 10)] = 1
    modelName: str = ""


#
# DeepUSEWidget
#


class DeepUSEWidget(DeepUltrasoundWidget):
    bundleTask = "elastography"

    def createLogic(self):
        return DeepUSELogic()

    def missingInputs(self, parameterNode: DeepUSEParameterNode) -> str:
        if not parameterNode.rfVolume:
            return _("Select an RF volume")
        if not parameterNode.strainVolume:
            return _("Select or create a strain output volume")
        return ""

    def apply(self, parameterNode: DeepUSEParameterNode) -> str:
        return self.logic.process(
            parameterNode.rfVolume, parameterNode.strainVolume, parameterNode.frameStep, parameterNode.modelName
        )


#
# DeepUSELogic
#


class DeepUSELogic(ScriptedLoadableModuleLogic):
    """Strain elastography on MRML volumes; runs without the widget (scripts, tests)."""

    def getParameterNode(self) -> DeepUSEParameterNode:
        return DeepUSEParameterNode(super().getParameterNode())

    def process(
        self,
        rfVolume: vtkMRMLScalarVolumeNode,
        strainVolume: vtkMRMLScalarVolumeNode,
        frameStep: int,
        modelName: str,
    ) -> str:
        """Check the RF frames and frame pairs, then estimate strain into ``strainVolume``.

        Raises:
            ValueError: invalid input, no output or model, or no strain estimator in this version.
        """
        frames, _geometry = rfFramesFromVolume(rfVolume)
        pairs = framePairs(frames.shape[0], frameStep)
        if strainVolume is None:
            raise ValueError("Select or create a strain output volume")
        if not modelName:
            raise ValueError("Choose a model bundle: press 'Refresh models' to list the installed ones")
        raise ValueError(
            f"Strain estimation ({len(pairs)} frame pairs with model '{modelName}') is not available yet in this "
            "version of DeepUltrasound"
        )


#
# DeepUSETest
#


class DeepUSETest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FramesAndStrainGrid()

    def test_FramesAndStrainGrid(self):
        """RF frames are read with their geometry and strain lands on the same grid."""
        rng = np.random.default_rng(0)
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.3, 0.02, 1.0), origin=(-10.0, 0.0, 0.0))
        rfVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF")
        arrayToVolume(rng.standard_normal((4, 64, 8)).astype(np.float32), rfVolume, geometry)

        frames, rfGeometry = rfFramesFromVolume(rfVolume)
        self.assertEqual(frames.shape, (4, 64, 8))
        self.assertEqual(framePairs(4, 1), [(0, 1), (1, 2), (2, 3)])

        strainVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Strain")
        strain = np.full((3, 64, 8), 1.5, dtype=np.float32)
        writeStrainFrames(strain, strainVolume, rfGeometry)
        stored, strainGeometry = volumeToArray(strainVolume)
        np.testing.assert_array_equal(stored, strain)
        self.assertTrue(strainGeometry.isClose(geometry))

        with self.assertRaises(ValueError):
            DeepUSELogic().process(rfVolume, strainVolume, frameStep=4, modelName="any")
        self.delayDisplay("DeepUSE test passed")
