"""EchoRegistration: dense frame-to-frame motion tracking of echocardiography images."""

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from EchoRegistrationLib import checkSameGrid, displacementToVolume
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
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
        self.parent.dependencies = ["DeepUltrasoundCommon"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Dense registration of a moving echo frame to a fixed one with a network trained with anatomical "
            "(shape) and texture constraints. The displacement is stored in mm (lateral, axial) on the fixed "
            "frame's grid. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#echoregistration">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on Hasan et al., echocardiography motion tracking with anatomical and texture "
            "constraints, arXiv:2309.00831."
        )
        # Hidden until its engine (deepultrasound.registration) exists: shown, it would offer a multi-GB
        # install and then only report that the engine is not available.
        self.parent.hidden = True


#
# EchoRegistrationParameterNode
#


@parameterNodeWrapper
class EchoRegistrationParameterNode:
    """
    fixedVolume - reference frame.
    movingVolume - frame registered to the fixed one (same grid).
    displacementVolume - output: displacement in mm, components (lateral, axial).
    modelName - model bundle chosen in the model list.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    displacementVolume: vtkMRMLVectorVolumeNode
    modelName: str = ""


#
# EchoRegistrationWidget
#


class EchoRegistrationWidget(DeepUltrasoundWidget):
    bundleTask = "registration"

    def createLogic(self):
        return EchoRegistrationLogic()

    def missingInputs(self, parameterNode: EchoRegistrationParameterNode) -> str:
        if not parameterNode.fixedVolume or not parameterNode.movingVolume:
            return _("Select the fixed and moving frames")
        if not parameterNode.displacementVolume:
            return _("Select or create a displacement output volume")
        return ""

    def apply(self, parameterNode: EchoRegistrationParameterNode) -> str:
        return self.logic.process(
            parameterNode.fixedVolume,
            parameterNode.movingVolume,
            parameterNode.displacementVolume,
            parameterNode.modelName,
        )


#
# EchoRegistrationLogic
#


class EchoRegistrationLogic(ScriptedLoadableModuleLogic):
    """Echo registration on MRML volumes; runs without the widget (scripts, tests)."""

    def getParameterNode(self) -> EchoRegistrationParameterNode:
        return EchoRegistrationParameterNode(super().getParameterNode())

    def process(
        self,
        fixedVolume: vtkMRMLScalarVolumeNode,
        movingVolume: vtkMRMLScalarVolumeNode,
        displacementVolume: vtkMRMLVectorVolumeNode,
        modelName: str,
    ) -> str:
        """Check that both frames share a grid, then register them into ``displacementVolume``.

        Raises:
            ValueError: invalid input, no output or model, or no registration network in this version.
        """
        checkSameGrid(fixedVolume, movingVolume)
        if displacementVolume is None:
            raise ValueError("Select or create a displacement output volume")
        if not modelName:
            raise ValueError("Choose a model bundle: press 'Refresh models' to list the installed ones")
        raise ValueError(
            f"Registration with model '{modelName}' is not available yet in this version of DeepUltrasound"
        )


#
# EchoRegistrationTest
#


class EchoRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GridCheckAndDisplacementInMm()

    def test_GridCheckAndDisplacementInMm(self):
        """Frames on one grid pass the check; a pixel displacement is stored in mm on the fixed grid."""
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.4, 0.2, 1.0))
        fixedVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Fixed")
        movingVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Moving")
        arrayToVolume(np.zeros((1, 32, 24), dtype=np.float32), fixedVolume, geometry)
        arrayToVolume(np.ones((1, 32, 24), dtype=np.float32), movingVolume, geometry)
        checkSameGrid(fixedVolume, movingVolume)

        displacementVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Displacement")
        displacementPixels = np.stack([np.full((32, 24), 2.0), np.full((32, 24), -1.0)])
        displacementToVolume(displacementPixels, displacementVolume, geometry)
        displacementMm, _geometry = volumeToArray(displacementVolume)
        np.testing.assert_allclose(displacementMm[0, 5, 7], [0.8, -0.2], rtol=1e-6)
        self.delayDisplay("EchoRegistration test passed")
