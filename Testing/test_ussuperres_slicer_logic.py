"""USSuperRes module logic (``USSuperRes/USSuperResLib``) on real MRML nodes from slicer-core.

Truth: the engine's fine-grid convention (same origin, lateral spacing / F: input line k is output
line k F), a lateral ramp that cubic interpolation reproduces exactly between the edge lines and at
every input line, and the view names of Slicer's own layout logic. The super-resolution runs in a
real ``deepultrasound superres`` process started with this interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import slicer

ROOT = Path(__file__).resolve().parent.parent
# In Slicer every scripted module folder is on sys.path; do the same here for the Lib packages.
for moduleDir in ("DeepUltrasoundCommon", "USSuperRes"):
    sys.path.insert(0, str(ROOT / moduleDir))

from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray  # noqa: E402
from USSuperResLib import (  # noqa: E402
    COMPARE_LAYOUT,
    COMPARE_VIEWS,
    SuperResolutionJob,
    SuperResolutionMethod,
    imagePlane,
    showSideBySide,
    superResolutionArguments,
    superResolvedGeometry,
)

#: an oblique probe pose: lines along I, samples along J, frames along K (mm)
OBLIQUE = VolumeGeometry.fromSpacingOrigin(
    spacing=(0.3, 0.05, 2.0),
    origin=(-12.5, 4.0, 30.0),
    directions=np.array([[0.0, -1.0, 0.0], [np.sqrt(0.5), 0.0, np.sqrt(0.5)], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)]]),
)
FRAMES, HEIGHT, WIDTH = 3, 12, 10
CUBIC = SuperResolutionMethod("cubic", device="cpu")
TIMEOUT_S = 120.0
needsCommand = pytest.mark.skipif(
    importlib.util.find_spec("deepultrasound.superres.command") is None,
    reason="the engine has no 'deepultrasound superres' command yet (deepultrasound.superres.command)",
)


def ras(geometry: VolumeGeometry, ijk) -> np.ndarray:
    return (geometry.ijkToRas @ [*ijk, 1.0])[:3]


def rampVolume(scene):
    """``(FRAMES, HEIGHT, WIDTH)`` float32 whose value is the line index i (plus 100 k per frame), on OBLIQUE."""
    ramp = np.arange(WIDTH, dtype=np.float32) + 100.0 * np.arange(FRAMES, dtype=np.float32)[:, None, None]
    frames = np.ascontiguousarray(np.broadcast_to(ramp, (FRAMES, HEIGHT, WIDTH)))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "low resolution")
    arrayToVolume(frames, volume, OBLIQUE)
    return volume, frames


def temporaryFolders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("SuperResolutionJob-")}


# Geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 4, 7])
def test_output_grid_is_the_engines_same_origin_and_spacing_over_f(factor):
    fine = superResolvedGeometry(OBLIQUE, factor)
    np.testing.assert_allclose(fine.origin, OBLIQUE.origin)
    np.testing.assert_allclose(fine.spacing, [0.3 / factor, 0.05, 2.0])
    np.testing.assert_allclose(fine.directions, OBLIQUE.directions, atol=1e-12)
    for k, j, n in [(0, 0, 0), (3, 5, 1), (WIDTH - 1, HEIGHT - 1, 2)]:  # phase 0: input line k is output line k F
        np.testing.assert_allclose(ras(fine, (k * factor, j, n)), ras(OBLIQUE, (k, j, n)), atol=1e-12)
    # The fine lines in between lie evenly on the segment between two input lines.
    np.testing.assert_allclose(ras(fine, (1, 0, 0)), ras(OBLIQUE, (1.0 / factor, 0, 0)), atol=1e-12)


def test_bad_factors_and_methods_are_refused():
    with pytest.raises(ValueError, match="factor must be >= 1"):
        superResolvedGeometry(OBLIQUE, 0)
    with pytest.raises(ValueError, match="Unknown super-resolution method 'bicubic'"):
        SuperResolutionMethod("bicubic")


@pytest.mark.parametrize(
    ("method", "options"),
    [
        (SuperResolutionMethod("cubic", "ignored", "cuda"), ["--method", "cubic"]),
        (SuperResolutionMethod("linear"), ["--method", "linear"]),
        (SuperResolutionMethod(), ["--device", "auto"]),
        (SuperResolutionMethod("network", "srresnet-x4", "cpu"), ["--model", "srresnet-x4", "--device", "cpu"]),
    ],
    ids=["cubic", "linear", "default-model", "named-model"],
)
def test_command_line_follows_the_cli_contract(method, options):
    arguments = superResolutionArguments(Path("in.nrrd"), Path("out.nrrd"), 4, method)
    assert arguments == ["superres", "in.nrrd", "--factor", "4", "-o", "out.nrrd", *options]


# The job ------------------------------------------------------------------------------------------


def test_job_refuses_what_it_cannot_run(mrml_scene):
    inputVolume, _ = rampVolume(mrml_scene)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="input image that holds voxels"):
        SuperResolutionJob(empty, inputVolume, 2, CUBIC)
    with pytest.raises(ValueError, match="output image volume"):
        SuperResolutionJob(inputVolume, None, 2, CUBIC)
    with pytest.raises(ValueError, match="other than the input"):
        SuperResolutionJob(inputVolume, inputVolume, 2, CUBIC)


@needsCommand
@pytest.mark.parametrize("factor", [2, 4])
def test_cubic_job_in_a_background_process_reproduces_a_ramp_on_the_fine_grid(mrml_scene, factor):
    inputVolume, frames = rampVolume(mrml_scene)
    outputVolume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "high resolution")
    before = temporaryFolders()
    job = SuperResolutionJob(inputVolume, outputVolume, factor, CUBIC, python=sys.executable)
    result = job.run(timeoutS=TIMEOUT_S)

    upsampled, geometry = volumeToArray(outputVolume)
    assert upsampled.shape == (FRAMES, HEIGHT, WIDTH * factor)
    assert geometry.isClose(superResolvedGeometry(OBLIQUE, factor), 1e-9)
    np.testing.assert_allclose(geometry.origin, OBLIQUE.origin, atol=1e-9)
    np.testing.assert_allclose(upsampled[..., ::factor], frames, atol=1e-4)  # input line k is output line k F
    inside = np.arange(factor, (WIDTH - 2) * factor + 1)  # every cubic neighbour inside the image: the ramp
    truth = inside / factor + 100.0 * np.arange(FRAMES)[:, None, None]
    np.testing.assert_allclose(upsampled[..., inside], np.broadcast_to(truth, upsampled[..., inside].shape), atol=1e-3)
    assert result.summary() == (
        f"{FRAMES} frame(s) of {HEIGHT} x {WIDTH} -> {HEIGHT} x {WIDTH * factor} (x{factor} laterally, "
        "cubic interpolation)"
    )
    assert job.progress is not None and job.progress[1] == FRAMES  # the engine's tqdm lines, over the frames
    assert temporaryFolders() == before  # the temporary files are gone
    assert [node.GetName() for node in mrml_scene.GetNodesByClass("vtkMRMLStorageNode")] == []
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2  # no staging node left behind


@needsCommand
def test_colour_input_is_passed_on_and_becomes_grey(mrml_scene):
    """The engine converts colour to grey; with R = G = B every grey conversion gives the ramp back."""
    _, frames = rampVolume(mrml_scene)
    colour = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    arrayToVolume(np.repeat(frames[..., None], 3, axis=3).astype(np.uint8), colour, OBLIQUE)
    outputVolume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "grey")
    SuperResolutionJob(colour, outputVolume, 2, CUBIC, python=sys.executable).run(timeoutS=TIMEOUT_S)
    upsampled, geometry = volumeToArray(outputVolume)
    assert upsampled.shape == (FRAMES, HEIGHT, 2 * WIDTH)
    np.testing.assert_allclose(upsampled[..., ::2], frames, atol=1.0)  # integer grey levels: within one level
    assert geometry.isClose(superResolvedGeometry(OBLIQUE, 2), 1e-9)


@needsCommand
def test_engine_failures_carry_its_message_and_leave_the_output_untouched(mrml_scene):
    inputVolume, _ = rampVolume(mrml_scene)
    outputVolume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "high resolution")
    before = temporaryFolders()
    with pytest.raises(
        ValueError,
        match=r"(?s)Super-resolution failed \(exit status 2\):.*factor must be an integer of at least 2, got 1",
    ):
        SuperResolutionJob(inputVolume, outputVolume, 1, CUBIC, python=sys.executable).run(timeoutS=TIMEOUT_S)
    assert outputVolume.GetImageData() is None and temporaryFolders() == before


def test_cancel_ends_the_process_and_removes_its_files(mrml_scene):
    inputVolume, _ = rampVolume(mrml_scene)
    outputVolume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "high resolution")
    before = temporaryFolders()
    job = SuperResolutionJob(inputVolume, outputVolume, 4, CUBIC, python=sys.executable).start()
    assert temporaryFolders() != before  # the input file was written
    job.cancel()
    assert not job.running and job.process.returncode is not None
    if sys.platform != "win32":
        assert job.process.returncode != 0  # ended by the interrupt (KeyboardInterrupt) or the kill, not by itself
    assert temporaryFolders() == before
    with pytest.raises(ValueError, match="Super-resolution failed"):
        job.finish()
    assert outputVolume.GetImageData() is None


# Side by side -------------------------------------------------------------------------------------


@pytest.fixture
def viewScene():
    """A scene with the application's view set-up: layout node and views (layout logic), and one slice logic
    per slice view (which makes its composite node)."""
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)
    sliceLogics = []
    for sliceNode in scene.GetNodesByClass("vtkMRMLSliceNode"):
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLScene(scene)
        sliceLogic.SetSliceNode(sliceNode)
        sliceLogics.append(sliceLogic)
    yield scene, layoutLogic
    for logic in [*sliceLogics, layoutLogic]:  # first: clearing the scene under live view logics does not return
        logic.SetMRMLScene(None)
    scene.Clear(1)


def test_side_by_side_shows_input_left_and_output_right_in_the_image_plane(viewScene):
    scene, layoutLogic = viewScene
    inputVolume, _ = rampVolume(scene)
    outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "high resolution")
    arrayToVolume(np.zeros((FRAMES, HEIGHT, 2 * WIDTH), np.float32), outputVolume, superResolvedGeometry(OBLIQUE, 2))
    inputVolume.CreateDefaultDisplayNodes()
    inputVolume.GetDisplayNode().AutoWindowLevelOff()
    inputVolume.GetDisplayNode().SetWindowLevel(7.0, 3.0)
    showSideBySide(inputVolume, outputVolume)

    assert layoutLogic.GetLayoutNode().GetViewArrangement() == COMPARE_LAYOUT
    views = layoutLogic.GetViewNodes()
    assert tuple(views.GetItemAsObject(n).GetLayoutName() for n in range(views.GetNumberOfItems())) == COMPARE_VIEWS
    composites = {node.GetLayoutName(): node for node in scene.GetNodesByClass("vtkMRMLSliceCompositeNode")}
    for viewName, volume in zip(COMPARE_VIEWS, (inputVolume, outputVolume)):
        assert composites[viewName].GetBackgroundVolumeID() == volume.GetID()
        assert composites[viewName].GetForegroundVolumeID() is None and composites[viewName].GetLinkedControl()
        sliceToRas = slicer.util.arrayFromVTKMatrix(
            scene.GetSingletonNode(viewName, "vtkMRMLSliceNode").GetSliceToRAS()
        )
        np.testing.assert_allclose(sliceToRas, imagePlane(OBLIQUE), atol=1e-9)
    # The views show frame 0 with lines across and depth down: every voxel centre of frame 0 is on the plane.
    plane = imagePlane(OBLIQUE)
    np.testing.assert_allclose(plane[:3, 0], OBLIQUE.directions[:, 0])
    np.testing.assert_allclose(plane[:3, 1], -OBLIQUE.directions[:, 1])
    for ijk in [(0, 0, 0), (WIDTH - 1, 0, 0), (3, HEIGHT - 1, 0)]:
        assert abs(np.dot(ras(OBLIQUE, ijk) - plane[:3, 3], plane[:3, 2])) < 1e-9
    outputDisplay = outputVolume.GetDisplayNode()
    assert (outputDisplay.GetWindow(), outputDisplay.GetLevel()) == (7.0, 3.0)  # the input's grey window


def test_side_by_side_needs_both_images(viewScene):
    scene, _ = viewScene
    inputVolume, _ = rampVolume(scene)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not computed yet")
    with pytest.raises(ValueError, match="Run the super-resolution first"):
        showSideBySide(inputVolume, empty)
