"""EchoRegistration module logic (``EchoRegistration/EchoRegistrationLib``) on real MRML nodes from slicer-core.

Truth: a small simulated apical view from ED to ES (``deepultrasound.simulation.echo``) tracked by a
real ``deepultrasound track`` process started with this interpreter (Farneback optical flow, so no
model is needed), against the engine's own tracking of the same frames run in this process; the
engine's displacement convention (``displacement_in_mm``: mm along the LPS axes of the grid) for the
way back to pixels; and the geometry of the frames: a transform must carry each point of frame t to
the labelled frame's point at the pixel the engine found.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import slicer

ROOT = Path(__file__).resolve().parent.parent
# In Slicer every scripted module folder is on sys.path; do the same here for the Lib packages.
for moduleDir in ("DeepUltrasoundCommon", "EchoRegistration"):
    sys.path.insert(0, str(ROOT / moduleDir))

from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray  # noqa: E402
from EchoRegistrationLib import (  # noqa: E402
    PHASE_MARKS,
    STRAIN_CURVES,
    EchoTrackingSession,
    Tracking,
    TrackingMethod,
    displacementRas,
    framesOfInput,
    labelledFrameOf,
    labelOfSegmentName,
    pixelsFromEngineDisplacement,
    segmentLabels,
    setGridTransform,
    trackingArguments,
)

from deepultrasound.io import Image  # noqa: E402
from deepultrasound.registration.baselines import BASELINES  # noqa: E402
from deepultrasound.registration.images import displacement_in_mm  # noqa: E402
from deepultrasound.registration.tracking import track_sequence  # noqa: E402
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator  # noqa: E402

FRAMES, SIZE, FRAME_INTERVAL_S = 4, 64, 0.04
FARNEBACK = TrackingMethod("farneback")
TIMEOUT_S = 120.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: an oblique probe pose: lateral along I, depth along J, the slice normal along K (RAS, unit columns)
DIRECTIONS = np.array([[0.0, -1.0, 0.0], [np.sqrt(0.5), 0.0, np.sqrt(0.5)], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)]])
#: the columns of the engine's strain.csv, in order
STRAIN_COLUMNS = [
    "frame",
    "time_s",
    "phase",
    "lv_area_mm2",
    "lv_volume_ml",
    "gls_endo_percent",
    "gls_mid_percent",
    "radial_percent",
    "similarity",
    "folding_percent",
    "flagged",
]


@pytest.fixture(scope="module")
def echo():
    """``(frames (T, H, W) float32 ED -> ES, labels of frame 0 and of frame 2, pixel size (lateral, axial) mm)``."""
    simulator = EchoSimulator(EchoConfig(height=SIZE, width=SIZE), seed=2)
    phases = np.linspace(0.0, simulator.config.es_phase, FRAMES)
    frames = np.stack([simulator.frame(float(phase)).image for phase in phases])
    return frames, simulator.labels(0.0), simulator.labels(float(phases[2])), tuple(simulator.sector.pixel_mm)


def engineTruth(echo, reference: int):
    """The engine's tracking of the frames in this process: ``TrackResult`` (labels, displacements in pixels)."""
    frames, labels0, labels2, spacing = echo
    labels = labels0 if reference == 0 else labels2
    return track_sequence(frames, labels, reference, BASELINES["farneback"], spacing)


def pose(spacing, frame: int) -> VolumeGeometry:
    """Frame ``frame`` of the probe, which moves 1 mm along R per frame."""
    return VolumeGeometry.fromSpacingOrigin(
        spacing=(*spacing, 1.0), origin=(-12.5 + frame, 4.0, 30.0), directions=DIRECTIONS
    )


@pytest.fixture
def scene():
    """A scene as the application sets it up for sequences: the Sequences logic makes the browsers' proxy nodes."""
    scene = slicer.vtkMRMLScene()
    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLScene(scene)
    yield scene
    scene.Clear(1)
    sequences.SetMRMLScene(None)


def echoSequence(scene, frames: np.ndarray, spacing):
    """The frames as a sequence (index "time" in s), its browser and proxy volume."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Echo")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    staging = slicer.vtkMRMLScalarVolumeNode()
    for t, frame in enumerate(frames):
        arrayToVolume(frame, staging, pose(spacing, t))
        sequence.SetDataNodeAtValue(staging, f"{FRAME_INTERVAL_S * t:.2f}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Echo browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())  # the Sequences logic makes the proxy volume
    browser.SetSelectedItemNumber(0)
    return sequence, browser, browser.GetProxyNode(sequence)


def labelMap(scene, labels: np.ndarray, geometry: VolumeGeometry, name: str = "ED labels"):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    arrayToVolume(labels, labelmap, geometry)
    return labelmap


def temporaryFolders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("TrackingJob-")}


def sliceGeometry(volume: VolumeGeometry, k: int) -> VolumeGeometry:
    """The grid of slice ``k`` of a volume: its own, moved ``k`` steps along K."""
    matrix = volume.ijkToRas.copy()
    matrix[:3, 3] += k * matrix[:3, 2]
    return VolumeGeometry(matrix)


def assertPointsGoWhereTheEngineSays(
    transformNode, pixels, frameGeometry, labelledGeometry, where=((32, 32), (20, 40), (45, 25), (10, 10))
) -> None:
    """Voxel centres ``(row, col)`` of frame t moved by the transform land on the labelled frame at ``p + u(p)``."""
    transform = transformNode.GetTransformFromParent()
    toLabelled = np.linalg.inv(labelledGeometry.ijkToRas)
    for row, col in where:
        point = (frameGeometry.ijkToRas @ [col, row, 0.0, 1.0])[:3]
        moved = np.array(transform.TransformPoint(point))
        ijk = (toLabelled @ [*moved, 1.0])[:3]
        expected = [col + pixels[0, row, col], row + pixels[1, row, col], 0.0]
        np.testing.assert_allclose(ijk, expected, atol=1e-4)


# Labels, method, geometry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "labels"),
    [
        (["LV cavity", "Myocardium", "Left atrium"], [1, 2, 3]),
        (["left_atrium", "LV", "myo"], [3, 1, 2]),  # by name, any order
        (["Segment_1", "Segment_2", "Segment_3"], [1, 2, 3]),  # by order
        (["LV cavity", "Segment_2"], [1, 2]),  # not all named: by order
    ],
)
def test_segments_map_to_camus_labels_by_name_or_order(names, labels):
    assert segmentLabels(names) == labels


def test_segment_mapping_refuses_what_it_cannot_tell():
    assert labelOfSegmentName("  Left-Atrium ") == 3 and labelOfSegmentName("aorta") is None
    with pytest.raises(ValueError, match="no segments"):
        segmentLabels([])
    with pytest.raises(ValueError, match="Several segments are named after the LV cavity"):
        segmentLabels(["LV", "LV cavity", "myocardium"])
    with pytest.raises(ValueError, match="has 4 segments"):
        segmentLabels(["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="Unknown tracking method 'optical'"):
        TrackingMethod("optical")


@pytest.mark.parametrize(
    ("method", "options"),
    [
        (TrackingMethod("farneback", "ignored", "cuda"), ["--method", "farneback"]),
        (TrackingMethod("elastix"), ["--method", "elastix"]),
        (TrackingMethod(), ["--method", "network", "--device", "auto"]),
        (
            TrackingMethod("network", "echo-small", "cpu"),
            ["--method", "network", "--model", "echo-small", "--device", "cpu"],
        ),
    ],
    ids=["farneback", "elastix", "default-model", "named-model"],
)
def test_command_line_follows_the_cli_contract(method, options):
    arguments = trackingArguments(Path("seq.nrrd"), Path("lab.nrrd"), 3, Path("out"), method)
    assert arguments == ["track", "seq.nrrd", "--labels", "lab.nrrd", "--frame", "3", "-o", "out", *options]


@pytest.mark.parametrize("flip", [False, True])
def test_engine_displacement_comes_back_as_the_pixels_it_was_made_of(flip):
    """The engine writes ``D diag(s) u`` along its grid's LPS axes; Slicer reads that grid in RAS. On an
    in-plane rotated grid (flipped or not), the module recovers ``u`` exactly."""
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    directionsRas = rotation @ np.diag([1.0, -1.0 if flip else 1.0, 1.0])
    geometry = VolumeGeometry.fromSpacingOrigin((0.3, 0.2, 0.05), (5.0, -3.0, 0.0), directionsRas)
    lps = LPS_TO_RAS @ geometry.ijkToRas
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)
    grid = Image(
        np.zeros((3, 6, 5), np.float32),
        tuple(geometry.spacing),
        tuple(lps[:3, 3]),
        tuple((lps[:3, :3] / geometry.spacing).ravel()),
    )
    written = displacement_in_mm(pixels, grid).array  # (T, H, W, 2) as the engine writes it
    np.testing.assert_allclose(pixelsFromEngineDisplacement(written, geometry), pixels, atol=1e-5)


def test_grid_transform_moves_points_of_a_frame_onto_the_labelled_slice_in_mm(mrml_scene):
    """Frame 1 of a multi-frame volume onto its slice 3: the displacement crosses two slices and follows the
    pixel displacement in mm along the oblique I and J axes."""
    spacing = (0.3, 0.2, 2.0)
    volume = VolumeGeometry.fromSpacingOrigin(spacing, (-12.5, 4.0, 30.0), DIRECTIONS)
    frameOf = [sliceGeometry(volume, t) for t in range(4)]
    pixels = np.stack([np.full((6, 5), 2.0), np.full((6, 5), -1.0)]).astype(np.float32)
    displacement = displacementRas(pixels, frameOf[1], frameOf[3])
    expected = 2.0 * 0.3 * DIRECTIONS[:, 0] - 1.0 * 0.2 * DIRECTIONS[:, 1] + 2 * 2.0 * DIRECTIONS[:, 2]
    np.testing.assert_allclose(displacement[4, 3], expected, atol=1e-12)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "frame 1")
    setGridTransform(node, displacement, frameOf[1])
    assertPointsGoWhereTheEngineSays(node, pixels, frameOf[1], frameOf[3], where=[(0, 0), (3, 2), (5, 4)])


# Inputs --------------------------------------------------------------------------------------------


def test_inputs_say_what_is_missing(scene, echo):
    frames, labels0, _, spacing = echo
    oneFrame = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "one frame")
    arrayToVolume(frames[:1], oneFrame, pose(spacing, 0))
    with pytest.raises(ValueError, match="holds 1 frame: tracking needs a sequence"):
        framesOfInput(oneFrame)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine")
    arrayToVolume(frames, volume, pose(spacing, 0))
    tracking = framesOfInput(volume)
    assert (
        tracking.count == FRAMES and tracking.frameIntervalS() is None and tracking.indexValues == ("0", "1", "2", "3")
    )

    stacked = np.zeros(frames.shape, np.uint8)
    with pytest.raises(ValueError, match="has labels on none of its frames"):
        labelledFrameOf(tracking, labelMap(scene, stacked, pose(spacing, 0), "empty"))
    stacked[1], stacked[3] = labels0, labels0
    several = labelMap(scene, stacked, pose(spacing, 0), "two frames")
    with pytest.raises(ValueError, match="has labels on frames 1, 3: choose the labelled frame"):
        labelledFrameOf(tracking, several)
    frame, labels = labelledFrameOf(tracking, several, 3)
    assert frame == 3 and np.array_equal(labels, labels0)
    with pytest.raises(ValueError, match="no labels on frame 2"):
        labelledFrameOf(tracking, several, 2)
    with pytest.raises(ValueError, match="outside the frames 0..3"):
        labelledFrameOf(tracking, several, 4)
    stacked[1, 0, 0] = 7
    with pytest.raises(ValueError, match="holds labels 7: expected CAMUS labels"):
        labelledFrameOf(tracking, labelMap(scene, stacked, pose(spacing, 0), "bad values"), 1)
    with pytest.raises(ValueError, match="segmentation or label map of one frame"):
        labelledFrameOf(tracking, None)


def test_frames_of_a_sequence_carry_their_poses_index_and_interval(scene, echo):
    frames, labels0, _, spacing = echo
    sequence, browser, proxy = echoSequence(scene, frames, spacing)
    tracking = framesOfInput(proxy)
    assert (tracking.sequence, tracking.browser) == (sequence, browser)
    assert tracking.indexValues == ("0.00", "0.04", "0.08", "0.12") and tracking.indexName == "time"
    assert tracking.frameIntervalS() == pytest.approx(FRAME_INTERVAL_S)
    assert all(geometry.isClose(pose(spacing, t)) for t, geometry in enumerate(tracking.geometries))
    np.testing.assert_array_equal(tracking.frames, frames)
    # The labels are read on the shown item's grid: drawn on the proxy at item 2, they are frame 2's.
    browser.SetSelectedItemNumber(2)
    frame, labels = labelledFrameOf(tracking, labelMap(scene, labels0, pose(spacing, 2)))
    assert frame == 2 and np.array_equal(labels, labels0)
    engineGrid = tracking.engineGeometry()
    np.testing.assert_allclose(engineGrid.spacing, [*spacing, FRAME_INTERVAL_S])


# Tracking in a background process ------------------------------------------------------------------


def test_sequence_tracking_gives_labels_transforms_and_strain_browsed_with_the_sequence(scene, echo):
    frames, labels0, _, spacing = echo
    sequence, browser, proxy = echoSequence(scene, frames, spacing)
    truth = engineTruth(echo, 0)
    before = temporaryFolders()
    session = EchoTrackingSession(scene, python=sys.executable)
    summary = session.process(proxy, labelMap(scene, labels0, pose(spacing, 0)), 0, FARNEBACK)

    assert summary.startswith(f"{FRAMES} frames tracked from frame 0 (farneback): ED frame 0")
    flagged = truth.quality.flagged_frames
    assert (f"FLAGGED frames {flagged}:" in summary) if flagged else summary.endswith("; no frame flagged")
    labelSequence, transforms = session.labelSequence, session.displacementSequence
    assert (labelSequence.GetName(), transforms.GetName()) == ("Echo labels", "Echo displacement")
    assert labelSequence.GetNumberOfDataNodes() == FRAMES and transforms.GetNumberOfDataNodes() == FRAMES
    for t in range(FRAMES):
        assert labelSequence.GetNthIndexValue(t) == sequence.GetNthIndexValue(t)
        item = labelSequence.GetNthDataNode(t)
        assert item.IsA("vtkMRMLLabelMapVolumeNode")
        labels, geometry = volumeToArray(item)
        assert labels.shape == (1, SIZE, SIZE) and geometry.isClose(pose(spacing, t))
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(labels[0], truth.labels[t])
        transform = transforms.GetNthDataNode(t)
        assert transform.IsA("vtkMRMLGridTransformNode")
        assertPointsGoWhereTheEngineSays(transform, truth.displacements[t], pose(spacing, t), pose(spacing, 0))
    np.testing.assert_array_equal(volumeToArray(labelSequence.GetNthDataNode(0))[0][0], labels0)

    table = session.strainTable.GetTable()
    columns = [table.GetColumnName(n) for n in range(table.GetNumberOfColumns())]
    assert columns == STRAIN_COLUMNS and table.GetNumberOfRows() == FRAMES
    times = slicer.util.arrayFromTableColumn(session.strainTable, "time_s")
    np.testing.assert_allclose(times, FRAME_INTERVAL_S * np.arange(FRAMES), atol=1e-4)
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(session.strainTable, "gls_endo_percent"), truth.curves.gls_endo, atol=1e-3
    )
    assert table.GetValueByName(0, "phase").ToString().startswith("ED")
    chart = session.strainChart
    assert chart.GetNumberOfPlotSeriesNodes() == len(STRAIN_CURVES) + 1
    for n, column in enumerate(STRAIN_CURVES):
        series = chart.GetNthPlotSeriesNode(n)
        assert series.GetTableNodeID() == session.strainTable.GetID()
        assert (series.GetXColumnName(), series.GetYColumnName()) == ("time_s", column)
    marks = chart.GetNthPlotSeriesNode(len(STRAIN_CURVES))
    assert marks.GetName() == PHASE_MARKS and marks.GetTableNodeID() == session.phaseMarksTable.GetID()
    assert (marks.GetXColumnName(), marks.GetYColumnName(), marks.GetLabelColumnName()) == (
        "time_s",
        "gls_endo_percent",
        "phase",
    )
    phaseFrames = [truth.curves.ed, truth.curves.es]
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(session.phaseMarksTable, "time_s"), FRAME_INTERVAL_S * np.array(phaseFrames)
    )
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(session.phaseMarksTable, "gls_endo_percent"),
        truth.curves.gls_endo[phaseFrames],
        atol=1e-3,
    )
    markTable = session.phaseMarksTable.GetTable()
    assert [markTable.GetValueByName(row, "phase").ToString() for row in (0, 1)] == ["ED", "ES"]

    assert session.browser is browser
    for output in (labelSequence, transforms):
        assert browser.IsSynchronizedSequenceNodeID(output.GetID())
    browser.SetSelectedItemNumber(2)
    labelProxy = session.labelProxy()
    np.testing.assert_array_equal(volumeToArray(labelProxy)[0][0], truth.labels[2])
    assert labelProxy.GetDisplayNode().GetColorNode().GetName() == "CAMUS labels"
    assert temporaryFolders() == before
    leftovers = [node.GetName() for node in scene.GetNodes() if node.GetName().startswith(("reading", "writing"))]
    assert leftovers == []
    proxies = [browser.GetProxyNode(output) for output in (sequence, labelSequence, transforms)]
    storage = {node.GetID() for node in scene.GetNodesByClass("vtkMRMLStorageNode")}
    assert storage <= {proxy.GetStorageNodeID() for proxy in proxies}  # only the Sequences logic's, for its proxies

    # Results written again (the next Apply on this input) fill the same nodes: nothing is added.
    count = scene.GetNumberOfNodes()
    columns = {name: [table.GetValueByName(row, name).ToString() for row in range(FRAMES)] for name in columns}
    figures = {"frames": FRAMES, "labelled_frame": 0, "method": "farneback", "ed_frame": 0, "es_frame": 3}
    session.writeOutputs(framesOfInput(proxy), 0, Tracking(truth.labels, truth.displacements, columns, figures))
    assert scene.GetNumberOfNodes() == count and session.labelSequence is labelSequence
    assert (
        labelSequence.GetNumberOfDataNodes() == FRAMES and chart.GetNumberOfPlotSeriesNodes() == len(STRAIN_CURVES) + 1
    )
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(session.phaseMarksTable, "time_s"), FRAME_INTERVAL_S * np.array([0, 3])
    )


def test_colour_volume_with_a_named_segmentation_gets_its_own_browser(scene, echo):
    """A multi-frame colour volume whose slice 2 is segmented (segments in the order LA, LV, myocardium, named):
    the labelled frame is found, the labels follow the names, the transforms cross the slices."""
    frames, _, labels2, spacing = echo
    volumeGeometry = VolumeGeometry.fromSpacingOrigin((*spacing, 3.0), (-12.5, 4.0, 30.0), DIRECTIONS)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "cine")
    arrayToVolume(np.repeat(frames[..., np.newaxis], 3, axis=3), colour, volumeGeometry)
    shuffled = np.zeros(frames.shape, np.uint8)
    shuffled[2] = np.choose(labels2, [0, 2, 3, 1])  # label values by segment order: LA 1, LV 2, myocardium 3
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    source = labelMap(scene, shuffled, volumeGeometry, "drawn")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, segmentation)
    segments = segmentation.GetSegmentation()
    for n, name in enumerate(["Left atrium", "LV cavity", "Myocardium"]):
        segments.GetNthSegment(n).SetName(name)
    truth = engineTruth(echo, 2)

    session = EchoTrackingSession(scene, python=sys.executable)
    summary = session.process(colour, segmentation, None, FARNEBACK)

    assert f"{FRAMES} frames tracked from frame 2" in summary
    browser = session.browser
    assert browser.GetName() == "cine tracking" and browser.GetMasterSequenceNode() is session.labelSequence
    assert browser.IsSynchronizedSequenceNodeID(session.displacementSequence.GetID())
    labelled = volumeToArray(session.labelSequence.GetNthDataNode(2))[0][0]
    np.testing.assert_array_equal(labelled, labels2)
    for t in range(FRAMES):
        labels, geometry = volumeToArray(session.labelSequence.GetNthDataNode(t))
        assert geometry.isClose(sliceGeometry(volumeGeometry, t))  # each frame's labels lie on its slice
        np.testing.assert_array_equal(labels[0], truth.labels[t])
        assertPointsGoWhereTheEngineSays(
            session.displacementSequence.GetNthDataNode(t),
            truth.displacements[t],
            sliceGeometry(volumeGeometry, t),
            sliceGeometry(volumeGeometry, 2),
        )
    colours = [node.GetName() for node in scene.GetNodesByClass("vtkMRMLColorTableNode")]
    assert colours == ["CAMUS labels"]  # the colour tables made by each segment's export are gone
    table = session.strainTable.GetTable()
    assert "time_s" not in [table.GetColumnName(n) for n in range(table.GetNumberOfColumns())]  # no frame interval
    assert all(session.strainChart.GetNthPlotSeriesNode(n).GetXColumnName() == "frame" for n in range(4))


def test_engine_failure_carries_its_message_and_writes_no_output(scene, echo):
    frames, labels0, _, spacing = echo
    small = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "small")
    arrayToVolume(frames[:, :24, :24], small, pose(spacing, 0))
    session = EchoTrackingSession(scene, python=sys.executable)
    before = temporaryFolders()
    with pytest.raises(ValueError, match=r"(?s)Tracking failed \(exit status 2\):.*at least 32 x 32"):
        session.process(small, labelMap(scene, labels0[None, :24, :24], pose(spacing, 0)), 0, FARNEBACK)
    assert session.job is None and session.labelSequence is None and temporaryFolders() == before
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0


def test_cancel_and_scene_close_end_the_process(scene, echo):
    frames, labels0, _, spacing = echo
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine")
    arrayToVolume(frames, volume, pose(spacing, 0))
    labels = np.zeros(frames.shape, np.uint8)
    labels[0] = labels0
    labelmap = labelMap(scene, labels, pose(spacing, 0))
    session = EchoTrackingSession(scene, python=sys.executable)
    before = temporaryFolders()

    assert session.process(volume, labelmap, None, FARNEBACK, waitForCompletion=False) == ""
    job = session.job
    assert job.running and temporaryFolders() != before
    session.cancel()
    assert session.job is None and not job.running and job.process.returncode is not None
    if sys.platform != "win32":
        assert job.process.returncode != 0  # ended by the interrupt (KeyboardInterrupt) or the kill, not by itself
    assert temporaryFolders() == before

    session.process(volume, labelmap, None, FARNEBACK, waitForCompletion=False)
    job = session.job
    session.labelSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "from an earlier run")
    scene.Clear(0)
    assert job.process.returncode is not None and session.job is None  # stopped with the scene
    assert (session.labelSequence, session.strainChart, session.browser) == (None, None, None)
    assert temporaryFolders() == before
