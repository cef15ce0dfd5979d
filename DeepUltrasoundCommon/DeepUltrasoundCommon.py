"""DeepUltrasoundCommon: hidden module that ships the helpers shared by the DeepUltrasound modules.

The helpers live in ``DeepUltrasoundCommonLib`` (volumes and geometry, model bundles,
dependency installation); the four capability modules import them from there.
"""

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

#
# DeepUltrasoundCommon
#


class DeepUltrasoundCommon(ScriptedLoadableModule):
    """Hidden module: no user interface, only shared Python helpers and their self-test."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepUltrasound Common")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Shared helpers of the DeepUltrasound extension (volume geometry, model bundles, "
            "dependency installation). This module has no user interface."
        )
        self.parent.acknowledgementText = _(
            "Part of the DeepUltrasound extension: https://github.com/deepultrasound/SlicerDeepUltrasound"
        )
        self.parent.hidden = True


#
# DeepUltrasoundCommonTest
#


class DeepUltrasoundCommonTest(ScriptedLoadableModuleTest):
    """Round trip of an image and its geometry through a volume node of the application's scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_VolumeRoundTrip()

    def test_VolumeRoundTrip(self):
        frames = np.random.default_rng(0).standard_normal((3, 40, 16)).astype(np.float32)
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.3, 0.05, 1.0), origin=(-2.0, 0.0, 5.0))
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RoundTrip")
        arrayToVolume(frames, node, geometry)
        roundTrip, roundTripGeometry = volumeToArray(node)
        np.testing.assert_array_equal(roundTrip, frames)
        self.assertTrue(roundTripGeometry.isClose(geometry))
        np.testing.assert_allclose(node.GetSpacing(), (0.3, 0.05, 1.0))
        self.delayDisplay("Volume round trip passed")
