"""DeepUSE module logic (``DeepUSE/DeepUSELib``) on real MRML nodes from slicer-core.

Live frames arrive over a real OpenIGTLink socket on 127.0.0.1: the engine's pyigtl server sends
them as ``deepultrasound scanner`` does, and a pyigtl client updates the RF volume node as
OpenIGTLinkIF does (IJK-to-RAS from the message matrix, LPS -> RAS, voxels through
``updateVolumeFromArray``, in one modification). Truth: a
simulated homogeneous phantom under known uniform compression (``deepultrasound.simulation``),
and, for the network path, the engine's offline estimator run by hand on the same frames.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pyigtl
import pytest
import slicer
import torch

ROOT = Path(__file__).resolve().parent.parent
# In Slicer every scripted module folder is on sys.path; do the same here for the Lib packages.
for moduleDir in ("DeepUltrasoundCommon", "DeepUSE"):
    sys.path.insert(0, str(ROOT / moduleDir))

from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray  # noqa: E402
from DeepUSELib import (  # noqa: E402
    FLAGGED_ATTRIBUTE,
    FLAGGED_LEGEND_TITLE,
    LOW_QUALITY_STATUS,
    NCC_AFTER_ATTRIBUTE,
    QUALITY_OK_STATUS,
    DeepUSESession,
    LiveStrainLogic,
    LiveStream,
    OfflineStrainJob,
    StrainMethod,
    StrainRecorder,
    colorLegend,
    createEstimator,
    createLiveProcessor,
    defaultStrainColorNode,
    flaggedFrames,
    qualityFlagOf,
    sequenceOfProxy,
    setQualityAttributes,
    showBMode,
    shownItemFlagged,
    showStrain,
    strainOfSequence,
    strainOfVolume,
    streamArguments,
)

from deepultrasound.elastography.bundles import save_deepuse_bundle  # noqa: E402
from deepultrasound.elastography.estimators import StrainEstimator  # noqa: E402
from deepultrasound.elastography.live import pipeline  # noqa: E402
from deepultrasound.elastography.networks import ReUSENet  # noqa: E402
from deepultrasound.simulation import Phantom, SimulationConfig, simulate_sequence  # noqa: E402
from deepultrasound.streaming.igtl import (  # noqa: E402
    FRAME_INDEX_KEY,
    REFERENCE_INDEX_KEY,
    FrameGeometry,
    IgtlServer,
    image_message,
)

HEIGHT, WIDTH, FRAMES = 256, 32, 6
WINDOW_MM = 1.0  # 51 samples at 0.02 mm: fits the 256-sample frames
BASELINE = StrainMethod(baseline=True, device="cpu", windowMm=WINDOW_MM)
INTERIOR = slice(60, -60)  # rows where the block-matching kernel and the strain window are complete
TIMEOUT_S = 30.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: an oblique probe pose: lines along I, samples along J, frames along K (mm)
POSE = VolumeGeometry.fromSpacingOrigin(
    spacing=(0.2, 0.02, 1.0),
    origin=(-12.5, 4.0, 30.0),
    directions=np.array([[0.0, -1.0, 0.0], [np.sqrt(0.5), 0.0, np.sqrt(0.5)], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)]]),
)


@pytest.fixture(scope="module")
def compression():
    """Homogeneous phantom, 0.5 % more compression per frame; truth ``strain_percent[k-1]`` for frame k vs 0."""
    config = SimulationConfig(
        n_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        compression_step_percent=0.5,
        mesh_cells=(16, 8),
        max_inclusions=0,
        layer_probability=0.0,
    )
    return simulate_sequence(config, seed=0, phantom=Phantom(depth_mm=HEIGHT * 0.02, width_mm=WIDTH * 0.2))


def truthPercent(compression, frame: int, reference: int = 0) -> float:
    """Median axial strain (%) of ``frame`` against ``reference`` over the interior rows."""
    applied = compression.applied_strain_percent
    scale = (applied[frame] - applied[reference]) / applied[1]  # the mechanics is linear
    return float(scale * np.median(compression.strain_percent[0, INTERIOR]))


def medianPercent(strain: np.ndarray) -> float:
    return float(np.median(strain[..., INTERIOR, :]))


@pytest.fixture
def scene():
    """A scene set up as the application does: default colour maps, the colour legend (registered by the
    Colors module) and the Sequences node classes."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLScene(scene)
    yield scene
    scene.Clear(1)


def feed(volumeNode, voxels: np.ndarray, geometry: VolumeGeometry) -> None:
    """Update ``volumeNode`` as OpenIGTLinkIF does: geometry and voxels ``(K, J, I)`` in one modification."""
    wasModifying = volumeNode.StartModify()
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(geometry.ijkToRas))
    slicer.util.updateVolumeFromArray(volumeNode, voxels)
    volumeNode.EndModify(wasModifying)


class Scanner:
    """The engine's OpenIGTLink server, as ``deepultrasound scanner`` streams RF, and a pyigtl client
    that updates a volume node like OpenIGTLinkIF."""

    def __init__(self) -> None:
        self.server = IgtlServer(port=0)
        self.client = pyigtl.OpenIGTLinkClient("127.0.0.1", self.server.port)
        assert self._waitFor(self.server.is_connected), "the client did not connect"

    @staticmethod
    def _waitFor(condition, timeoutS: float = TIMEOUT_S) -> bool:
        """Whether ``condition()`` became true within ``timeoutS`` (pyigtl offers no connection event)."""
        tick = threading.Event()
        for _ in range(int(timeoutS / 0.01)):
            if condition():
                return True
            tick.wait(0.01)
        return condition()

    def send(self, frame: np.ndarray, geometry: VolumeGeometry) -> None:
        """One IMAGE message of device "RF" placed at ``geometry`` (RAS); OpenIGTLink matrices are LPS."""
        lps = VolumeGeometry(LPS_TO_RAS @ geometry.ijkToRas)
        placement = FrameGeometry(
            spacing=(float(lps.spacing[0]), float(lps.spacing[1])),
            origin=tuple(float(v) for v in lps.origin),
            direction=tuple(float(v) for v in lps.directions.ravel()),
        )
        assert self.server.publish(image_message(frame, placement, "RF"))

    def receiveInto(self, volumeNode) -> None:
        """What OpenIGTLinkIF does with an IMAGE message: geometry, then voxels, one modification."""
        message = self.client.wait_for_message("RF", timeout=TIMEOUT_S)
        assert message is not None, "no RF message arrived"
        matrix = message.ijk_to_world_matrix
        if message.world_coordinate_system == "lps":
            matrix = LPS_TO_RAS @ matrix
        feed(volumeNode, message.image, VolumeGeometry(matrix))

    def stream(self, frame: np.ndarray, geometry: VolumeGeometry, volumeNode) -> None:
        self.send(frame, geometry)
        self.receiveInto(volumeNode)

    def close(self) -> None:
        self.client.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def scanner():
    scanner = Scanner()
    yield scanner
    scanner.close()


def liveNodes(scene):
    return tuple(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("RF", "RF strain", "RF B-mode"))


def recordedStrain(recorder: StrainRecorder) -> dict[str, np.ndarray]:
    sequence = recorder.strainSequence
    return {
        sequence.GetNthIndexValue(item): slicer.util.arrayFromVolume(sequence.GetNthDataNode(item))[0]
        for item in range(sequence.GetNumberOfDataNodes())
    }


# Live strain ---------------------------------------------------------------------------------------


def streamLive(scene, scanner, compression, processor):
    """Stream every frame of ``compression`` through live processing with recording; returns
    (stopped LiveStrainLogic, StrainRecorder, strain volume, B-mode volume)."""
    rf, strainVolume, bmodeVolume = liveNodes(scene)
    recorder = StrainRecorder(scene, "RF")
    live = LiveStrainLogic()
    live.start(rf, strainVolume, bmodeVolume, processor, recorder)
    try:
        for frame in compression.rf:
            scanner.stream(frame, POSE, rf)
            assert live.waitUntilIdle(TIMEOUT_S)
    finally:
        live.stop()
    return live, recorder, strainVolume, bmodeVolume


def test_live_strain_over_openigtlink_matches_uniform_compression(scene, scanner, compression):
    live, recorder, strainVolume, bmodeVolume = streamLive(
        scene, scanner, compression, createLiveProcessor(BASELINE, None, None)
    )

    counters = live.counters
    assert (counters.framesIn, counters.framesProcessed, counters.referenceFrames) == (FRAMES, FRAMES, 1)
    assert (counters.framesSkipped, counters.errors, counters.framesShown) == (0, 0, FRAMES - 1)
    strain, strainGeometry = volumeToArray(strainVolume)
    bmode, bmodeGeometry = volumeToArray(bmodeVolume)
    assert strain.shape == bmode.shape == (1, HEIGHT, WIDTH) and strain.dtype == np.float32
    assert strainGeometry.isClose(POSE) and bmodeGeometry.isClose(POSE)
    assert bmode.max() == 0.0 and bmode.min() >= -60.0
    assert medianPercent(strain) == pytest.approx(truthPercent(compression, FRAMES - 1), rel=0.1)

    # Every shown frame was recorded at its arrival index, with its geometry.
    recorded = recordedStrain(recorder)
    assert list(recorded) == [str(k) for k in range(1, FRAMES)]
    for index, frameStrain in recorded.items():
        assert medianPercent(frameStrain) == pytest.approx(truthPercent(compression, int(index)), rel=0.1)
    assert recorder.bmodeSequence.GetNumberOfDataNodes() == FRAMES - 1
    assert recorder.browser.GetMasterSequenceNode() is recorder.strainSequence
    assert recorder.browser.IsSynchronizedSequenceNodeID(recorder.bmodeSequence.GetID())
    assert live.statusText().startswith(f"{FRAMES} frames in, {FRAMES} processed (1 references), 0 skipped, 0 errors")


def test_live_network_bundle_carries_state_and_resets_at_each_reference(scene, scanner, compression, tmp_path):
    torch.manual_seed(0)
    model = ReUSENet(initial_channels=2).eval()
    bundle = save_deepuse_bundle(
        model, tmp_path / "tiny-reusenet", name="tiny-reusenet", example_size=(32, 16), formats=()
    )
    method = StrainMethod(model=str(bundle), device="cpu", windowMm=WINDOW_MM)
    live, recorder, _, _ = streamLive(scene, scanner, compression, createLiveProcessor(method, 3, None))

    # References are frames 0 and 3: pairs (0, 1), (0, 2) carry the recurrent state, then (3, 4), (3, 5).
    assert (live.counters.referenceFrames, live.counters.framesShown) == (2, 4)
    offline = StrainEstimator(bundle, device="cpu")
    expected = {}
    for reference in (0, 3):
        frames = compression.rf[reference : reference + 3]
        result = offline.estimate(frames, 0.02, reference="first", window_mm=WINDOW_MM)
        expected.update({str(reference + 1 + k): strain for k, strain in enumerate(result.strain)})
    recorded = recordedStrain(recorder)
    assert list(recorded) == list(expected)
    for index, strain in recorded.items():
        np.testing.assert_allclose(strain, expected[index], atol=1e-4, err_msg=f"frame {index}")
    assert not np.allclose(recorded["2"], recorded["5"], atol=1e-4), "different pairs gave the same strain"


def test_frames_arriving_while_busy_are_skipped_and_the_latest_wins(scene, scanner, compression):
    class HeldAtFirstFrame:
        """The real processor, held in its first frame until released, so that frames queue up meanwhile."""

        def __init__(self, processor) -> None:
            self.processor, self.entered, self.release = processor, threading.Event(), threading.Event()

        def reset(self) -> None:
            self.processor.reset()

        def process(self, frame, axialSpacingMm):
            if not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(TIMEOUT_S)
            return self.processor.process(frame, axialSpacingMm)

    held = HeldAtFirstFrame(createLiveProcessor(BASELINE, None, None))
    rf, strainVolume, bmodeVolume = liveNodes(scene)
    live = LiveStrainLogic()
    live.start(rf, strainVolume, bmodeVolume, held)
    try:
        scanner.stream(compression.rf[0], POSE, rf)
        assert held.entered.wait(TIMEOUT_S)
        for frame in compression.rf[1:5]:
            scanner.stream(frame, POSE, rf)
        counters = live.counters
        assert (counters.framesIn, counters.framesSkipped, counters.framesProcessed) == (5, 3, 0)
        held.release.set()
        assert live.waitUntilIdle(TIMEOUT_S)
    finally:
        held.release.set()
        live.stop()

    counters = live.counters
    assert (counters.framesProcessed, counters.referenceFrames, counters.framesShown) == (2, 1, 1)
    assert counters.framesIn == counters.framesProcessed + counters.framesSkipped + counters.errors
    # The frame shown is the last one received (frame 4), compared with the reference (frame 0).
    assert medianPercent(volumeToArray(strainVolume)[0]) == pytest.approx(truthPercent(compression, 4), rel=0.1)


def test_refused_frames_are_counted_and_reported_and_the_stream_goes_on(scene, compression):
    rf, strainVolume, bmodeVolume = liveNodes(scene)
    live = LiveStrainLogic()
    live.start(rf, strainVolume, bmodeVolume, createLiveProcessor(BASELINE, None, None))
    bad = compression.rf[1].copy()
    bad[10, 3] = np.nan
    try:
        feed(rf, compression.rf[:1], POSE)
        assert live.waitUntilIdle(TIMEOUT_S)
        feed(rf, bad[np.newaxis], POSE)
        assert live.waitUntilIdle(TIMEOUT_S)
        assert live.counters.errors == 1 and "NaN" in live.lastError
        feed(rf, compression.rf[1:3], POSE)  # two slices: not one frame
        assert live.counters.errors == 2 and "expected one scalar slice" in live.lastError
        feed(rf, compression.rf[2:3], POSE)
        assert live.waitForResult(TIMEOUT_S)
    finally:
        live.stop()
    counters = live.counters
    assert (counters.framesIn, counters.framesProcessed, counters.errors, counters.framesShown) == (4, 2, 2, 1)
    assert medianPercent(volumeToArray(strainVolume)[0]) == pytest.approx(truthPercent(compression, 2), rel=0.1)


def test_start_refuses_bad_nodes_and_a_second_start(scene):
    rf, strainVolume, bmodeVolume = liveNodes(scene)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "vector")
    processor = createLiveProcessor(BASELINE, None, None)
    live = LiveStrainLogic()
    with pytest.raises(ValueError, match="Select the incoming RF volume"):
        live.start(None, strainVolume, bmodeVolume, processor)
    with pytest.raises(ValueError, match="Select the incoming RF volume"):
        live.start(vector, strainVolume, bmodeVolume, processor)
    with pytest.raises(ValueError, match="three different volumes"):
        live.start(rf, rf, bmodeVolume, processor)
    live.start(rf, strainVolume, bmodeVolume, processor)
    try:
        with pytest.raises(ValueError, match="already running"):
            live.start(rf, strainVolume, bmodeVolume, processor)
    finally:
        live.stop()
    assert not live.running


@pytest.mark.parametrize(
    ("method", "referenceEvery", "message"),
    [
        (StrainMethod(model="/no/such/bundle", device="cpu"), 10, "neither a bundle folder nor a bundled model"),
        (BASELINE, 1, "reference_every must be an integer >= 2"),
    ],
)
def test_engine_errors_reach_the_user_as_value_errors(method, referenceEvery, message):
    with pytest.raises(ValueError, match=message):
        createLiveProcessor(method, referenceEvery, None)
    if not method.baseline:
        with pytest.raises(ValueError, match=message):
            createEstimator(method)


def test_strain_method_refuses_a_non_positive_window():
    with pytest.raises(ValueError, match="positive length in mm"):
        StrainMethod(windowMm=0.0)


# Offline strain ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairWithPrevious", [False, True])
def test_offline_volume_strain_on_the_rf_grid(scene, compression, pairWithPrevious):
    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    arrayToVolume(compression.rf, rf, POSE)
    strainVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "strain")
    bmodeVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "B-mode")
    result = strainOfVolume(rf, strainVolume, createEstimator(BASELINE), WINDOW_MM, pairWithPrevious, bmodeVolume)

    strain, geometry = volumeToArray(strainVolume)
    assert strain.shape == (FRAMES - 1, HEIGHT, WIDTH) and geometry.isClose(POSE)
    assert volumeToArray(bmodeVolume)[0].shape == strain.shape and volumeToArray(bmodeVolume)[1].isClose(POSE)
    for k in range(1, FRAMES):
        reference = k - 1 if pairWithPrevious else 0
        assert medianPercent(strain[k - 1]) == pytest.approx(truthPercent(compression, k, reference), rel=0.1)
    reference = "previous" if pairWithPrevious else "first"
    expected = f"{FRAMES - 1} strain frame(s) of {HEIGHT} x {WIDTH} (block matching, reference: {reference} frame)"
    assert result.summary().startswith(expected)


@pytest.mark.parametrize("pairWithPrevious", [False, True])
def test_offline_job_in_a_background_process_equals_the_in_process_strain(scene, compression, pairWithPrevious):
    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    arrayToVolume(compression.rf, rf, POSE)
    outputs = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("s", "b", "s2", "b2")]
    strainOfVolume(rf, outputs[0], createEstimator(BASELINE), WINDOW_MM, pairWithPrevious, outputs[1])
    job = OfflineStrainJob(rf, outputs[2], outputs[3], BASELINE, pairWithPrevious, python=sys.executable)
    result = job.run(timeoutS=120.0)

    assert job.progress is not None and job.progress[1] == FRAMES - 1  # progress over the pairs was reported
    for inProcess, background in ((outputs[0], outputs[2]), (outputs[1], outputs[3])):
        expected, expectedGeometry = volumeToArray(inProcess)
        computed, geometry = volumeToArray(background)
        np.testing.assert_allclose(computed, expected, atol=1e-4)
        assert geometry.isClose(expectedGeometry)
    assert result.summary().startswith(f"{FRAMES - 1} strain frame(s) of {HEIGHT} x {WIDTH} (block matching")
    assert [node.GetName() for node in scene.GetNodesByClass("vtkMRMLStorageNode")] == []  # nothing left behind
    for attribute in (NCC_AFTER_ATTRIBUTE, FLAGGED_ATTRIBUTE):  # the quality figure came back from the process
        assert outputs[2].GetAttribute(attribute) == outputs[0].GetAttribute(attribute)
    assert len(result.flagged) == FRAMES - 1 and not result.flagged.any()


def test_offline_strain_flags_the_frames_it_cannot_trust(scene, compression):
    """A blank frame 2 (no echo): its pair (0, 2) has no quality figure and is flagged, on the node and in
    the summary; the others are not."""
    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    frames = compression.rf.copy()
    frames[2] = 0.0
    arrayToVolume(frames, rf, POSE)
    strainVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "strain")
    result = strainOfVolume(rf, strainVolume, createEstimator(BASELINE), WINDOW_MM)

    assert flaggedFrames(strainVolume) == [1] and result.flagged.tolist() == [False, True, False, False, False]
    assert "FLAGGED frame(s) 1:" in result.summary()
    nccAfter = [float(value) for value in strainVolume.GetAttribute(NCC_AFTER_ATTRIBUTE).split(",")]
    assert np.isnan(nccAfter[1]) and min(nccAfter[:1] + nccAfter[2:]) > 0.5


def test_offline_job_cancel_ends_the_process_and_failures_carry_its_output(scene, compression):
    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    arrayToVolume(compression.rf, rf, POSE)
    strainVolume, bmodeVolume = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", n) for n in ("s", "b"))
    job = OfflineStrainJob(rf, strainVolume, bmodeVolume, BASELINE, python=sys.executable).start()
    job.cancel()
    assert not job.running and job.process.returncode is not None
    with pytest.raises(ValueError, match="failed"):
        job.finish()
    tooLong = StrainMethod(baseline=True, device="cpu", windowMm=50.0)  # longer than the 5 mm frames
    with pytest.raises(ValueError, match=r"(?s)failed \(exit status 2\).*pass a shorter window"):
        OfflineStrainJob(rf, strainVolume, bmodeVolume, tooLong, python=sys.executable).run(timeoutS=120.0)
    with pytest.raises(ValueError, match="strain and B-mode output"):
        OfflineStrainJob(rf, None, bmodeVolume, BASELINE)


def rfSequenceWithBrowser(scene, frames: np.ndarray):
    """An RF sequence of ``frames`` (index "time" in s, 0.05 s apart) whose probe moves 1 mm along R between
    frames, its browser and proxy volume; and the pose of each frame."""
    rfSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "RF sequence")
    rfSequence.SetIndexName("time")
    rfSequence.SetIndexUnit("s")
    staging = slicer.vtkMRMLScalarVolumeNode()
    poses = []
    for k, frame in enumerate(frames):
        pose = VolumeGeometry(POSE.ijkToRas + np.array([[0, 0, 0, k], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
        arrayToVolume(frame, staging, pose)
        rfSequence.SetDataNodeAtValue(staging, f"{0.05 * k:.2f}")
        poses.append(pose)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "RF browser")
    browser.SetAndObserveMasterSequenceNodeID(rfSequence.GetID())
    proxy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF proxy")
    browser.AddProxyNode(proxy, rfSequence, False)
    return rfSequence, browser, proxy, poses


def assertSequenceStrain(strainSequence, poses, compression) -> None:
    """Items at the moving frames' index values, on the fixed frames' grids (pairs with the previous frame),
    with the simulated strain."""
    assert (strainSequence.GetIndexName(), strainSequence.GetIndexUnit()) == ("time", "s")
    assert [strainSequence.GetNthIndexValue(item) for item in range(2)] == ["0.05", "0.10"]
    for item in range(2):
        strain, geometry = volumeToArray(strainSequence.GetNthDataNode(item))
        assert strain.shape == (1, HEIGHT, WIDTH)
        assert geometry.isClose(poses[item])  # the pair's fixed frame (frame item, pair with previous)
        assert medianPercent(strain) == pytest.approx(truthPercent(compression, item + 1, item), rel=0.1)


def test_offline_sequence_strain_keeps_index_values_and_frame_geometry(scene, compression):
    rfSequence, browser, proxy, poses = rfSequenceWithBrowser(scene, compression.rf[:3])

    assert sequenceOfProxy(proxy) == (browser, rfSequence)
    assert sequenceOfProxy(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")) is None
    strainSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "strain sequence")
    strainOfSequence(rfSequence, strainSequence, createEstimator(BASELINE), WINDOW_MM, pairWithPrevious=True)
    assertSequenceStrain(strainSequence, poses, compression)


def test_offline_sequence_strain_in_a_background_process(scene, compression):
    """The module's offline path for a sequence: the same strain sequence, computed outside Slicer's process,
    with progress and the quality figure; mismatched outputs are refused before any work."""
    rfSequence, _browser, _proxy, poses = rfSequenceWithBrowser(scene, compression.rf[:3])
    storageNodes = scene.GetNumberOfNodesByClass("vtkMRMLStorageNode")
    inProcess = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "in process")
    strainOfSequence(rfSequence, inProcess, createEstimator(BASELINE), WINDOW_MM, pairWithPrevious=True)
    strainSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "strain sequence")
    job = OfflineStrainJob(rfSequence, strainSequence, None, BASELINE, pairWithPrevious=True, python=sys.executable)
    job.run(timeoutS=120.0)

    assert job.progress is not None and job.progress[1] == 2  # progress over the 2 pairs was reported
    assertSequenceStrain(strainSequence, poses, compression)
    for item in range(2):
        expected = volumeToArray(inProcess.GetNthDataNode(item))[0]
        np.testing.assert_allclose(volumeToArray(strainSequence.GetNthDataNode(item))[0], expected, atol=1e-4)
    for attribute in (NCC_AFTER_ATTRIBUTE, FLAGGED_ATTRIBUTE):
        assert strainSequence.GetAttribute(attribute) == inProcess.GetAttribute(attribute)
    assert scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == storageNodes  # nothing left behind
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    with pytest.raises(ValueError, match="strain of an RF sequence is a sequence"):
        OfflineStrainJob(rfSequence, volume, None, BASELINE)


def test_browsing_to_a_flagged_strain_item_is_seen(scene, compression):
    """The module greys out the strain item the browser shows when it is flagged: item 1 (at the RF's third
    index value) here; the first RF frame has no strain item."""
    rfSequence, browser, _proxy, _poses = rfSequenceWithBrowser(scene, compression.rf[:3])
    strainSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "strain sequence")
    strainOfSequence(rfSequence, strainSequence, createEstimator(BASELINE), WINDOW_MM)
    setQualityAttributes(strainSequence, np.array([0.9, 0.2]), np.array([False, True]))
    shown = []
    for item in range(3):
        browser.SetSelectedItemNumber(item)
        shown.append(shownItemFlagged(browser, strainSequence))
    assert shown == [False, False, True]


def test_quality_status_messages_of_the_stream_process_set_and_clear_the_flag():
    """STATUS LowQuality / QualityOK (what `deepultrasound stream` sends on a change) set and clear the flag;
    any other STATUS (a reconnection, a refused message) leaves it."""
    flagged = False
    seen = []
    for errorName in ("NotReady", LOW_QUALITY_STATUS, "BadMessage", None, QUALITY_OK_STATUS, "Reconnected"):
        flagged = qualityFlagOf(errorName, flagged)
        seen.append(flagged)
    assert seen == [False, True, True, True, False, False]
    assert (LOW_QUALITY_STATUS, QUALITY_OK_STATUS) == (pipeline.LOW_QUALITY_STATUS, pipeline.QUALITY_OK_STATUS)


def test_session_offline_sequence_joins_the_browser_and_greys_out_flagged_items(scene, compression):
    """The module's offline path on the proxy of an RF sequence: computed in the background, the strain sequence
    browsed with the RF; an item whose frame is blank (no echo) is flagged where the browser shows it."""
    frames = compression.rf[:3].copy()
    frames[2] = 0.0
    rfSequence, browser, proxy, _poses = rfSequenceWithBrowser(scene, frames)
    session = DeepUSESession(scene, python=sys.executable)
    summary = session.process(proxy, None, BASELINE, pairWithPrevious=True)

    assert summary.startswith(f"2 strain frame(s) of {HEIGHT} x {WIDTH}") and "FLAGGED frame(s) 1" in summary
    strainSequence = session.strainSequence
    assert strainSequence.GetName() == "RF sequence strain" and strainSequence.GetNumberOfDataNodes() == 2
    assert browser.IsSynchronizedSequenceNodeID(strainSequence.GetID())
    shown = []
    for item in range(3):
        browser.SetSelectedItemNumber(item)
        shown.append(session.strainFlagged())
    assert shown == [False, False, True]


def test_session_forgets_its_nodes_and_stops_its_job_when_the_scene_closes(scene, compression):
    """File > Close Scene while offline strain runs: the process ends, no removed node is kept, and the next
    Apply on a new recording works."""
    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    arrayToVolume(compression.rf, rf, POSE)
    session = DeepUSESession(scene, python=sys.executable)
    strainVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "strain")
    assert session.process(rf, strainVolume, BASELINE, waitForCompletion=False) == ""
    job = session.offlineJob
    assert job.running and session.bmodeVolume is not None

    scene.Clear(0)
    assert job.process.returncode is not None  # the process was stopped with the scene
    state = (session.offlineJob, session.bmodeVolume, session.strainSequence, session.offlineBrowser)
    assert state == (None, None, None, None) and not session.liveStream.running

    rf = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF recording")
    arrayToVolume(compression.rf[:3], rf, POSE)
    strainVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "strain")
    assert session.process(rf, strainVolume, BASELINE).startswith("2 strain frame(s)")
    assert session.bmodeVolume.GetScene() is scene and scene.IsNodePresent(session.bmodeVolume)


def test_offline_refuses_sequences_it_cannot_pair(scene):
    rfSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "RF sequence")
    staging = slicer.vtkMRMLScalarVolumeNode()
    arrayToVolume(np.ones((8, 4), np.float32), staging, POSE)
    rfSequence.SetDataNodeAtValue(staging, "0")
    strainSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "strain")
    with pytest.raises(ValueError, match="holds 1 frame"):
        strainOfSequence(rfSequence, strainSequence, None, WINDOW_MM)
    arrayToVolume(np.ones((8, 5), np.float32), staging, POSE)
    rfSequence.SetDataNodeAtValue(staging, "1")
    with pytest.raises(ValueError, match="is 8 x 5, the first is 8 x 4"):
        strainOfSequence(rfSequence, strainSequence, None, WINDOW_MM)


# Display ---------------------------------------------------------------------------------------


def test_strain_display_colour_range_and_legend(scene):
    strainVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "strain")
    arrayToVolume(np.linspace(-3.0, 1.0, 64, dtype=np.float32).reshape(1, 8, 8), strainVolume, POSE)
    colorMap = defaultStrainColorNode(scene)
    assert colorMap.GetName() == "Rainbow"  # Viridis is a file-based map of the application

    showStrain(strainVolume, colorMap, (-2.0, 0.5), legend=True)
    display = strainVolume.GetDisplayNode()
    assert display.GetColorNodeID() == colorMap.GetID() and not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((-2.0, 0.5))
    legend = colorLegend(strainVolume)
    assert legend is not None and legend.GetVisibility() and legend.GetPrimaryDisplayNode() is display
    assert legend.GetTitleText() == "Axial strain (%)"

    showStrain(strainVolume, colorMap, (-1.0, 0.0), legend=False)
    assert colorLegend(strainVolume) is legend and not legend.GetVisibility()
    assert display.GetWindowLevelMin() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="minimum < maximum"):
        showStrain(strainVolume, colorMap, (0.0, 0.0))

    showStrain(strainVolume, colorMap, (-1.0, 0.0), legend=True, flagged=True)  # greyed out, and the legend says so
    assert display.GetColorNode().GetName() == "Grey" and legend.GetTitleText() == FLAGGED_LEGEND_TITLE
    showStrain(strainVolume, colorMap, (-1.0, 0.0), legend=True)  # trustworthy again: the chosen colours are back
    assert display.GetColorNodeID() == colorMap.GetID() and legend.GetTitleText() == "Axial strain (%)"

    bmodeVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "B-mode")
    arrayToVolume(np.full((1, 8, 8), -20.0, np.float32), bmodeVolume, POSE)
    showBMode(bmodeVolume)
    bmodeDisplay = bmodeVolume.GetDisplayNode()
    assert bmodeDisplay.GetColorNode().GetName() == "Grey"
    assert (bmodeDisplay.GetWindowLevelMin(), bmodeDisplay.GetWindowLevelMax()) == pytest.approx((-60.0, 0.0))


def test_no_strain_colour_map_in_a_bare_scene(mrml_scene):
    with pytest.raises(ValueError, match="choose a strain colour map"):
        defaultStrainColorNode(mrml_scene)


# Live strain in a background process --------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def framePlacement(geometry: VolumeGeometry) -> FrameGeometry:
    lps = VolumeGeometry(LPS_TO_RAS @ geometry.ijkToRas)
    return FrameGeometry(
        spacing=(float(lps.spacing[0]), float(lps.spacing[1])),
        origin=tuple(float(v) for v in lps.origin),
        direction=tuple(float(v) for v in lps.directions.ravel()),
    )


def receiveInto(client: pyigtl.OpenIGTLinkClient, deviceName: str, volumeNode):
    """What OpenIGTLinkIF's connector does with a served IMAGE message; returns the message (None: none came).

    STATUS messages of the same device name (the stream's reports) go to a text node there; skipped here.
    """
    message = client.wait_for_message(deviceName, timeout=2.0)
    while message is not None and not isinstance(message, pyigtl.ImageMessage):
        message = client.wait_for_message(deviceName, timeout=2.0)
    if message is not None:
        feed(volumeNode, message.image, VolumeGeometry(LPS_TO_RAS @ message.ijk_to_world_matrix))
    return message


def test_live_stream_process_serves_strain_and_stops_with_the_scene(scene, compression):
    """The module's live path: ``deepultrasound stream`` as a process, reading RF from a scanner and serving
    Strain over a real OpenIGTLink socket, followed into the scene; closing the scene ends the process."""
    source, servePort = IgtlServer(port=0), freePort()
    live = LiveStream(python=sys.executable)
    arguments = streamArguments("127.0.0.1", source.port, servePort, BASELINE, referenceEvery=0)
    live.start(scene, arguments + ["--source-timeout", "60"])  # frames come slowly: one per received result
    viewer = None  # stands in for Slicer's OpenIGTLinkIF connector on the serve port
    try:
        assert Scanner._waitFor(lambda: source.is_connected() or not live.running, 120.0), live.poll()
        assert live.running, live.poll()
        viewer = pyigtl.OpenIGTLinkClient("127.0.0.1", servePort)
        strainNode, bmodeNode = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", n) for n in ("Strain", "BMode"))
        live.recorder = StrainRecorder(scene, "Strain")
        live.follow(strainNode, bmodeNode)
        received = []
        for index, frame in enumerate(compression.rf):
            metadata = {FRAME_INDEX_KEY: str(index)}
            assert source.publish(image_message(frame, framePlacement(POSE), "RF", metadata=metadata))
            message = receiveInto(viewer, "Strain", strainNode) if index > 0 else None  # 0: the reference
            if message is not None:
                assert receiveInto(viewer, "BMode", bmodeNode) is not None
                received.append((int(message.metadata[FRAME_INDEX_KEY]), int(message.metadata[REFERENCE_INDEX_KEY])))
                frameIndex, referenceIndex = received[-1]
                measured = medianPercent(slicer.util.arrayFromVolume(strainNode)[0])
                truth = truthPercent(compression, frameIndex, referenceIndex)
                assert measured == pytest.approx(truth, rel=0.1), (frameIndex, referenceIndex)
        assert received, "\n".join(live.poll())
        assert live.framesShown == len(received) == live.recorder.frameCount
        assert volumeToArray(strainNode)[1].isClose(POSE)
        process = live.process
        scene.Clear(0)  # File > Close Scene
        assert not live.running and live.process is None and live.strainVolume is None
        assert process.returncode is not None
        assert "fps" in live.status, live.status  # the process's final status line
    finally:
        if viewer is not None:
            viewer.stop()
        live.stop()
        source.stop()


def test_stream_arguments_carry_the_settings_and_refuse_bad_ports():
    arguments = streamArguments(" scanner.local ", 18944, 18950, StrainMethod(model="usenet", windowMm=2.0), 5, 0.8)
    assert arguments[:5] == ["stream", "--host", "scanner.local", "--port", "18944"]
    options = dict(zip(arguments[1::2], arguments[2::2]))
    assert options["--serve-port"] == "18950" and options["--model"] == "usenet"
    assert (options["--reference-every"], options["--reference-min-ncc"], options["--window-mm"]) == ("5", "0.8", "2")
    assert "--baseline" in streamArguments("h", 1, 2, BASELINE) and "--reference-min-ncc" not in streamArguments(
        "h", 1, 2, BASELINE
    )
    with pytest.raises(ValueError, match="strain port 0 is outside"):
        streamArguments("127.0.0.1", 18944, 0, BASELINE)
    with pytest.raises(ValueError, match="host"):
        streamArguments(" ", 18944, 18945, BASELINE)
