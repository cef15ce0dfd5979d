"""MRML logic of the Slicer modules (the ``*Lib`` packages) on real MRML nodes from slicer-core."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# In Slicer every scripted module folder is on sys.path; do the same here for the Lib packages.
for moduleDir in ("DeepUltrasoundCommon", "DeepUSE", "USSuperRes"):
    sys.path.insert(0, str(ROOT / moduleDir))

from DeepUltrasoundCommonLib import (  # noqa: E402
    BundleInfo,
    VolumeGeometry,
    arrayToVolume,
    labelMapToArray,
    listBundledModels,
    loadRequirements,
    missingRequirements,
    modelChoices,
    volumeToArray,
)
from DeepUSELib import framePairs, rfFramesFromVolume, writeStrainFrames  # noqa: E402

OBLIQUE = VolumeGeometry.fromSpacingOrigin(
    spacing=(0.3, 0.05, 2.0),
    origin=(-12.5, 4.0, 30.0),
    directions=np.array([[0.0, -1.0, 0.0], [np.sqrt(0.5), 0.0, np.sqrt(0.5)], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)]]),
)


def newVolume(scene, className="vtkMRMLScalarVolumeNode", name="volume"):
    return scene.AddNewNodeByClass(className, name)


# Volumes and geometry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("className", "array"),
    [
        ("vtkMRMLScalarVolumeNode", np.random.default_rng(0).standard_normal((3, 20, 12)).astype(np.float32)),
        ("vtkMRMLScalarVolumeNode", np.arange(20 * 12, dtype=np.int16).reshape(1, 20, 12)),
        ("vtkMRMLLabelMapVolumeNode", np.random.default_rng(1).integers(0, 5, (2, 10, 8)).astype(np.uint8)),
        ("vtkMRMLVectorVolumeNode", np.random.default_rng(2).standard_normal((1, 10, 8, 2)).astype(np.float32)),
    ],
)
def test_array_round_trip_keeps_values_dtype_and_geometry(mrml_scene, className, array):
    node = newVolume(mrml_scene, className)
    arrayToVolume(array, node, OBLIQUE)
    roundTrip, geometry = volumeToArray(node)
    assert roundTrip.dtype == array.dtype
    np.testing.assert_array_equal(roundTrip, array)
    np.testing.assert_allclose(geometry.ijkToRas, OBLIQUE.ijkToRas, atol=1e-12)
    np.testing.assert_allclose(node.GetSpacing(), (0.3, 0.05, 2.0))
    np.testing.assert_allclose(node.GetOrigin(), (-12.5, 4.0, 30.0))


def test_geometry_maps_voxel_index_to_ras(mrml_scene):
    node = newVolume(mrml_scene)
    arrayToVolume(np.zeros((2, 4, 6), dtype=np.float32), node, OBLIQUE)
    ijk = np.array([5.0, 3.0, 1.0, 1.0])
    expected = OBLIQUE.origin + OBLIQUE.directions @ (ijk[:3] * OBLIQUE.spacing)
    matrix = volumeToArray(node)[1].ijkToRas
    np.testing.assert_allclose((matrix @ ijk)[:3], expected, atol=1e-12)


def test_volume_to_array_is_a_copy(mrml_scene):
    node = newVolume(mrml_scene)
    arrayToVolume(np.zeros((1, 4, 4), dtype=np.float32), node, OBLIQUE)
    array, _ = volumeToArray(node)
    array[:] = 7.0
    assert not np.any(volumeToArray(node)[0])


def test_one_frame_keeps_its_dtype_and_int64_is_narrowed(mrml_scene):
    node = newVolume(mrml_scene)
    arrayToVolume(np.ones((4, 5), dtype=np.float32), node, OBLIQUE)
    stored, _ = volumeToArray(node)
    assert stored.shape == (1, 4, 5) and stored.dtype == np.float32
    arrayToVolume(np.full((1, 2, 2), 3, dtype=np.int64), node, OBLIQUE)
    stored, _ = volumeToArray(node)
    assert stored.dtype == np.int32 and np.all(stored == 3)


@pytest.mark.parametrize(
    ("className", "array", "message"),
    [
        ("vtkMRMLScalarVolumeNode", np.zeros((1, 2, 3, 4)), r"expected \(J, I\) or \(K, J, I\)"),
        ("vtkMRMLVectorVolumeNode", np.zeros((2, 3, 4)), "vector volume"),
        ("vtkMRMLScalarVolumeNode", np.array([[[np.nan]]]), "non-finite"),
        ("vtkMRMLScalarVolumeNode", np.full((1, 1, 1), 2**40, dtype=np.int64), "do not fit in int32"),
    ],
)
def test_array_to_volume_rejects_bad_arrays(mrml_scene, className, array, message):
    with pytest.raises(ValueError, match=message):
        arrayToVolume(array, newVolume(mrml_scene, className), OBLIQUE)


def test_volume_to_array_rejects_missing_input(mrml_scene):
    with pytest.raises(ValueError, match="No volume selected"):
        volumeToArray(None)
    with pytest.raises(ValueError, match="has no image data"):
        volumeToArray(newVolume(mrml_scene, name="empty"))


def test_singular_geometry_is_refused():
    with pytest.raises(ValueError, match="singular"):
        VolumeGeometry.fromSpacingOrigin(spacing=(0.0, 1.0, 1.0))


def test_label_map_rules(mrml_scene):
    labels = newVolume(mrml_scene, "vtkMRMLLabelMapVolumeNode")
    arrayToVolume(np.array([[[0, 2], [1, 2]]], dtype=np.int16), labels, OBLIQUE)
    array, _ = labelMapToArray(labels)
    assert array.dtype == np.int32 and array.tolist() == [[[0, 2], [1, 2]]]
    arrayToVolume(np.array([[[0, -1]]], dtype=np.int16), labels, OBLIQUE)
    with pytest.raises(ValueError, match="negative labels"):
        labelMapToArray(labels)
    with pytest.raises(ValueError, match="not a label map"):
        labelMapToArray(newVolume(mrml_scene, name="scalar"))


# Dependencies and bundles ---------------------------------------------------------------------


def test_requirements_file_and_missing_packages(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# comment\n--index-url https://example.invalid\nnumpy>=1.0  # installed\n"
        "numpy>=9999\nno-such-package-deepultrasound-test\nnumpy; python_version < '3'\n"
    )
    requirements = loadRequirements(path)
    assert [str(r) for r in requirements] == [
        "numpy>=1.0",
        "numpy>=9999",
        "no-such-package-deepultrasound-test",
        'numpy; python_version < "3"',
    ]
    assert [str(r) for r in missingRequirements(requirements)] == ["numpy>=9999", "no-such-package-deepultrasound-test"]
    path.write_text("numpy >= = 1\n")
    with pytest.raises(ValueError, match=r"requirements.txt:1: invalid requirement"):
        loadRequirements(path)


def test_model_list_starts_with_the_engine_default():
    """Refreshing the list keeps "" (the engine's default, live and offline alike) instead of the first bundle."""
    bundles = [
        BundleInfo("reusenet", "elastography", "2.0", Path("r")),
        BundleInfo("usenet", "elastography", "1.0", Path("u")),
    ]
    choices = modelChoices(bundles)
    assert choices == [("Default", ""), ("reusenet (2.0)", "reusenet"), ("usenet (1.0)", "usenet")]
    assert modelChoices([]) == [("Default", "")]


def _saveTinyBundle(folder, name, task):
    """A real weights-only bundle of a one-channel USENet, saved by the engine."""
    import torch

    from deepultrasound.elastography.networks import USENet
    from deepultrasound.runtime import save_bundle

    return save_bundle(
        folder,
        USENet(initial_channels=1),
        name=name,
        version="1.0",
        task=task,
        architecture="usenet",
        architecture_module="deepultrasound.elastography.networks",
        architecture_args={"initial_channels": 1},
        example_inputs=(torch.zeros(1, 2, 32, 32),),
        input_names=["pair"],
        output_names=["displacement"],
        description=f"{name} for tests",
        formats=(),
    )


def test_bundle_listing_filters_and_sorts_the_installed_bundles(monkeypatch, tmp_path):
    shelf, single = tmp_path / "shelf", tmp_path / "single"
    usenet = _saveTinyBundle(shelf / "b-usenet", "usenet", "elastography")
    echo = _saveTinyBundle(shelf / "a-echo", "echo-reg", "registration")
    reusenet = _saveTinyBundle(single, "reusenet", "elastography")
    monkeypatch.setenv(
        "DEEPULTRASOUND_MODELS", os.pathsep.join([str(shelf), "", str(tmp_path / "absent"), str(single)])
    )

    def mine(bundles):  # leave out any bundle shipped with the engine
        return [b for b in bundles if tmp_path in b.path.parents]

    assert [(b.name, b.path) for b in mine(listBundledModels("elastography"))] == [
        ("reusenet", reusenet),
        ("usenet", usenet),
    ]
    assert mine(listBundledModels("registration")) == [
        BundleInfo("echo-reg", "registration", "1.0", echo, "echo-reg for tests")
    ]
    assert len(mine(listBundledModels())) == 3
    monkeypatch.setenv("DEEPULTRASOUND_MODELS", str(single))
    assert [b.name for b in mine(listBundledModels())] == ["reusenet"]


# Module logic ---------------------------------------------------------------------------------


def test_deepuse_frames_pairs_and_strain_grid(mrml_scene):
    rf = newVolume(mrml_scene, name="rf")
    arrayToVolume(np.random.default_rng(3).standard_normal((5, 32, 8)).astype(np.float64), rf, OBLIQUE)
    frames, geometry = rfFramesFromVolume(rf)
    assert frames.shape == (5, 32, 8) and frames.dtype == np.float32
    assert framePairs(5, 2) == [(0, 2), (1, 3), (2, 4)]
    strain = newVolume(mrml_scene, name="strain")
    writeStrainFrames(np.full((3, 32, 8), 0.5), strain, geometry)
    stored, strainGeometry = volumeToArray(strain)
    assert stored.dtype == np.float32 and stored.shape == (3, 32, 8)
    assert strainGeometry.isClose(OBLIQUE)


@pytest.mark.parametrize(("frameCount", "step"), [(5, 0), (5, 5), (2, 3)])
def test_deepuse_frame_step_out_of_range(frameCount, step):
    with pytest.raises(ValueError, match=f"Frame step {step} needs"):
        framePairs(frameCount, step)


def test_deepuse_needs_two_finite_frames(mrml_scene):
    rf = newVolume(mrml_scene, name="one-frame")
    arrayToVolume(np.zeros((1, 8, 8), dtype=np.float32), rf, OBLIQUE)
    with pytest.raises(ValueError, match="at least 2 frames"):
        rfFramesFromVolume(rf)
    rf = newVolume(mrml_scene, "vtkMRMLVectorVolumeNode", "vector")
    arrayToVolume(np.zeros((2, 8, 8, 2), dtype=np.float32), rf, OBLIQUE)
    with pytest.raises(ValueError, match="vector volume"):
        rfFramesFromVolume(rf)
