"""Live DeepUSE: the per-frame processor, OpenIGTLink messages, and the stream pipeline over real sockets.

Truth: known rigid motion of speckle (displacement = shift, strain = 0), parity of the live
processor with offline :class:`StrainEstimator` on the same frames, geometry round trips through
IMAGE messages, counted frames through a scanner -> stream -> viewer chain on 127.0.0.1 (free
ports, pyigtl on both ends, bounded waits on arriving messages, no sleeps), and hostile sources
that write raw bytes (a 2^62-byte header, garbage, a wrong CRC, a reset) which the stream must
report in one line each, count, and survive.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import crcmod
import numpy as np
import pyigtl
import pytest
import torch

from deepultrasound.cli import main
from deepultrasound.elastography.bundles import save_deepuse_bundle
from deepultrasound.elastography.estimators import StrainEstimator
from deepultrasound.elastography.frames import FRAME_TO_FRAME, normalise_frame
from deepultrasound.elastography.live import LiveStrainProcessor
from deepultrasound.elastography.live.pipeline import StrainStream, StreamConfig
from deepultrasound.elastography.live.throughput import model_and_strain
from deepultrasound.elastography.networks import ReUSENet
from deepultrasound.elastography.prealign import PREALIGN_UNIFORM_STRAIN
from deepultrasound.errors import InputError
from deepultrasound.streaming.igtl import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_INDEX_KEY,
    STATUS_CONNECTION_LOST,
    STATUS_OK,
    STATUS_OVERFLOW,
    FrameGeometry,
    IgtlClient,
    IgtlServer,
    LinkEvent,
    LinkProblem,
    StatusMessage,
    frame_from_message,
    frame_index,
    image_message,
)
from deepultrasound.streaming.queues import LatestSlot
from deepultrasound.streaming.scanner import LoopedFrames, Scanner, cyclic_order

WINDOW_MM = 0.5  # 25 samples at 0.02 mm: fits the small frames
GEOMETRY = FrameGeometry((0.2, 0.02), (1.5, -2.0, 0.0))


def _shifted_speckle(shifts: list[int], shape: tuple[int, int] = (96, 16), seed: int = 0) -> np.ndarray:
    """Frames of one speckle pattern moved down by ``shifts`` samples: (N, H, W) float32."""
    rng = np.random.default_rng(seed)
    tall = rng.standard_normal((shape[0] + 2 * max(shifts) + 8, shape[1])).astype(np.float32)
    top = max(shifts) + 4
    return np.stack([tall[top - s : top - s + shape[0]] for s in shifts])


def _collect(client: IgtlClient, until, timeout: float = 20.0) -> list[pyigtl.MessageBase]:
    """Messages taken from ``client`` until ``until(messages)`` holds; bounded by ``timeout``."""
    messages: list[pyigtl.MessageBase] = []
    deadline = time.monotonic() + timeout
    while not until(messages) and time.monotonic() < deadline:
        messages += client.take(0.5)
    assert until(messages), f"timed out; got {[(m.device_name, m.message_type) for m in messages]}"
    return messages


def _strain(messages: list[pyigtl.MessageBase]) -> list[pyigtl.MessageBase]:
    return [m for m in messages if m.device_name == "Strain" and m.message_type == "IMAGE"]


def _statuses(messages: list[pyigtl.MessageBase]) -> list[StatusMessage]:
    return [m for m in messages if m.message_type == "STATUS"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("live") / "tiny-reusenet"
    return save_deepuse_bundle(
        ReUSENet(initial_channels=2).eval(), folder, name="tiny", example_size=(32, 16), formats=()
    )


@pytest.fixture(scope="module")
def prealigned_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ReUSENet of ``tiny_bundle``, its manifest asking for pre-aligned frame-to-frame pairs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("live") / "tiny-prealigned"
    return save_deepuse_bundle(
        ReUSENet(initial_channels=2).eval(),
        folder,
        name="tiny-prealigned",
        example_size=(32, 16),
        formats=(),
        pairs=FRAME_TO_FRAME,
        prealign=PREALIGN_UNIFORM_STRAIN,
    )


@pytest.fixture()
def baseline() -> LiveStrainProcessor:
    return LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None)


# ---------------------------------------------------------------- processor


def test_rigid_shift_gives_the_shift_and_zero_strain(baseline: LiveStrainProcessor) -> None:
    frames = _shifted_speckle([0, 1, 2, 3])
    assert baseline.process(frames[0].astype(np.float64), 0.02) is None  # first frame: the reference
    for k in (1, 2, 3):
        result = baseline.process(frames[k], 0.02)
        inner = (slice(30, -30), slice(2, -2))
        assert result.displacement.shape == (2, 96, 16) and result.strain.dtype == np.float32
        assert np.median(result.displacement[1][inner]) == pytest.approx(k, abs=0.05)
        assert np.abs(np.median(result.displacement[0][inner])) < 0.05
        assert np.abs(np.median(result.strain[inner])) < 0.2
        assert (result.reference_index, result.frame_index, result.reference_reset) == (0, k, k == 1)
        assert result.bmode_db.shape == (96, 16) and result.bmode_db.max() == 0.0
        assert set(result.timings_ms) == {"normalise", "network", "strain", "bmode"}


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("bundle", ["tiny_bundle", "prealigned_bundle"])
def test_live_reusenet_equals_offline_estimate_with_a_first_frame_reference(
    bundle: str, refine: bool, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(bundle)  # the frame-to-frame one chains its pairs live as offline
    frames = _shifted_speckle([0, 1, 2, 3], (64, 32))
    offline = StrainEstimator(model, device="cpu", refine=refine).estimate(frames, 0.02, window_mm=WINDOW_MM)
    live = LiveStrainProcessor(model, device="cpu", window_mm=WINDOW_MM, reference_every=None, refine=refine)
    results = [live.process(frame, 0.02) for frame in frames]
    assert results[0] is None
    for k, result in enumerate(results[1:]):  # the recurrent state is carried exactly as offline
        np.testing.assert_allclose(result.displacement, offline.displacement[k], atol=1e-5)
        np.testing.assert_allclose(result.strain, offline.strain[k], rtol=1e-5, atol=1e-4)


def test_reference_every_k_frames_restarts_the_state(tiny_bundle: Path) -> None:
    frames = _shifted_speckle([0, 1, 2, 3, 4, 5, 6], (64, 32))
    live = LiveStrainProcessor(tiny_bundle, device="cpu", window_mm=WINDOW_MM, reference_every=3)
    results = [live.process(frame, 0.02) for frame in frames]
    assert [r is None for r in results] == [True, False, False, True, False, False, True]
    assert [(r.reference_index, r.frame_index, r.reference_reset) for r in results if r is not None] == [
        (0, 1, True),
        (0, 2, False),
        (3, 4, True),
        (3, 5, False),
    ]
    fresh = LiveStrainProcessor(tiny_bundle, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    fresh.process(frames[3], 0.02)  # the same pair from zero states
    np.testing.assert_allclose(results[4].displacement, fresh.process(frames[4], 0.02).displacement, atol=1e-5)


def test_bad_frames_raise_and_leave_the_state_alone(baseline: LiveStrainProcessor) -> None:
    frames = _shifted_speckle([0, 2])
    baseline.process(frames[0], 0.02)
    nan = frames[1].copy()
    nan[5, 5] = np.nan
    for bad, match in [
        (nan, "NaN"),
        (frames, "2-D"),
        (np.zeros((96, 16)), "constant"),
        (frames[1].astype(np.complex64), "real"),
        (frames[1][:10], "window"),
    ]:
        with pytest.raises(InputError, match=match):
            baseline.process(bad, 0.02)
    result = baseline.process(frames[1], 0.02)  # same reference, next frame index
    assert (result.reference_index, result.frame_index) == (0, 1)
    assert np.median(result.displacement[1][30:-30]) == pytest.approx(2, abs=0.05)


def test_size_change_and_decorrelation_start_a_new_reference() -> None:
    live = LiveStrainProcessor(
        baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None, reference_min_ncc=0.5
    )
    frame = _shifted_speckle([0])[0]
    assert live.process(frame, 0.02) is None
    assert live.process(frame + 0.1 * _shifted_speckle([0], seed=3)[0], 0.02) is not None  # NCC ~ 0.99
    assert live.process(_shifted_speckle([0], seed=7)[0], 0.02) is None  # unrelated speckle: NCC ~ 0
    assert live.process(_shifted_speckle([0], (80, 16))[0], 0.02) is None  # size change: a reset
    assert live.process(_shifted_speckle([1], (80, 16))[0], 0.02).reference_index == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reference_every": 1}, "reference_every"),
        ({"reference_min_ncc": 1.5}, "reference_min_ncc"),
        ({"window_mm": 0.01}, "window"),
        ({"crop": slice(0, 10, 2)}, "step"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        LiveStrainProcessor(baseline=True, device="cpu", **kwargs)


def test_crop_keeps_the_rows_it_says() -> None:
    live = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, crop=slice(10, -6))
    frames = _shifted_speckle([0, 1], (112, 16))
    live.process(frames[0], 0.02)
    assert live.process(frames[1], 0.02).strain.shape == (96, 16)
    assert live.kept_rows(112) == slice(10, 106)


# ---------------------------------------------------------------- OpenIGTLink


def test_latest_slot_keeps_the_newest_and_counts_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert [slot.put(k) for k in range(3)] == [False, True, True]
    assert slot.get(0.1) == 2 and slot.get(0.01) is None and slot.dropped == 2


def test_message_checksum_is_openigtlinks_crc64() -> None:
    """The fast checksum installed for pyigtl equals its own crcmod one (CRC-64/ECMA-182)."""
    reference = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, rev=False, initCrc=0, xorOut=0)
    body = np.random.default_rng(0).standard_normal(100_003).astype(np.float32).tobytes()
    assert pyigtl.messages.CRC64(b"123456789") == reference(b"123456789") == 0x6C40DF5F0B497347
    assert pyigtl.messages.CRC64(body) == reference(body)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_image_and_status_messages_round_trip_with_geometry(dtype: type) -> None:
    frame = (np.arange(6 * 4).reshape(6, 4) - 5).astype(dtype)
    with IgtlServer() as server:
        client = IgtlClient(port=server.port)
        try:
            deadline = time.monotonic() + 10
            while not server.is_connected() and time.monotonic() < deadline:
                client.take(0.05)  # lets the connection come up; bounded
            assert server.publish(
                image_message(frame, GEOMETRY, "RF", metadata={"FrameIndex": "41"}),
                StatusMessage(2, "frame 3: NaN", "InputError", device_name="Strain"),
            )
            messages = _collect(client, lambda got: len(got) == 2)
        finally:
            client.stop()
    image = next(m for m in messages if m.device_name == "RF")
    received, geometry = frame_from_message(image)
    assert received.dtype == dtype and np.array_equal(received, frame) and frame_index(image) == 41
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, atol=1e-6)
    status = next(m for m in messages if m.device_name == "Strain")
    assert (status.code, status.error_name, status.status_string) == (2, "InputError", "frame 3: NaN")


def test_client_keeps_every_status_and_the_newest_image_of_a_device_in_arrival_order() -> None:
    frame = np.zeros((6, 4), np.float32)
    sent = [
        StatusMessage(2, "frame 3: NaN", "InputError", device_name="Strain"),
        image_message(frame, GEOMETRY, "Strain"),
        StatusMessage(1, "source back", "Reconnected", device_name="Strain"),
        image_message(frame + 1, GEOMETRY, "Strain"),
    ]
    with IgtlServer() as server:
        client = IgtlClient(port=server.port)
        try:
            _collect(client, lambda got: server.is_connected(), timeout=10)
            assert server.publish(*sent)
            deadline = time.monotonic() + 10
            while client.arrived("Strain") < len(sent) and time.monotonic() < deadline:
                time.sleep(0.01)  # all four arrive before any is taken (a bounded poll)
            taken = client.take(1.0)
        finally:
            client.stop()
    assert [(m.message_type, getattr(m, "error_name", "")) for m in taken] == [
        ("STATUS", "InputError"),
        ("STATUS", "Reconnected"),
        ("IMAGE", ""),
    ]
    assert frame_from_message(taken[2])[0].max() == 1 and client.overwritten("Strain") == 1


def test_cyclic_order_plays_the_ramp_up_and_down() -> None:
    assert cyclic_order(4).tolist() == [0, 1, 2, 3, 2, 1]
    with pytest.raises(InputError):
        cyclic_order(1)


# ---------------------------------------------------------------- pipeline


def _stream(processor: LiveStrainProcessor, source_port: int, **kwargs) -> StrainStream:
    config = StreamConfig(
        source_port=source_port,
        serve_port=0,
        source_timeout_s=kwargs.pop("timeout", 1.0),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        **kwargs,
    )
    return StrainStream(processor, config)


def _source(count: int = 6, shape: tuple[int, int] = (96, 16)) -> LoopedFrames:
    frames = _shifted_speckle(list(range(count)), shape)
    return LoopedFrames(frames, GEOMETRY, np.arange(count))


def test_scanner_to_stream_to_viewer_serves_strain_with_geometry_and_frame_numbers() -> None:
    processor = LiveStrainProcessor(
        baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=5, crop=slice(8, None)
    )
    with Scanner(_source().as_dtype("int16"), rate_hz=40) as scanner, _stream(processor, scanner.port) as stream:
        viewer = IgtlClient(port=stream.output.port)
        try:
            messages = _collect(
                viewer, lambda got: len(_strain(got)) >= 6 and any(m.device_name == "BMode" for m in got)
            )
        finally:
            viewer.stop()
        figures = stream.figures()
    strain = _strain(messages)[-1]
    image, geometry = frame_from_message(strain)
    assert image.shape == (88, 16) and image.dtype == np.float32
    np.testing.assert_allclose(geometry.origin[:2], (1.5, -2.0 + 8 * 0.02), atol=1e-5)  # the crop moves the origin
    index, reference = frame_index(strain), frame_index(strain, "ReferenceIndex")
    # a new reference every 5 processed frames: 1 to 4 frames after it, plus any dropped on the way
    assert 1 <= index - reference <= 4 + figures["dropped"]
    if figures["dropped"] == 0:
        assert index % 5 != 0 and reference == index - index % 5
    assert figures["sent"] >= 6 and figures["errors"] == 0 and figures["latency_p50_ms"] > 0
    # the quality figure travels with every image: a rigid speckle shift, explained by block matching
    assert float(strain.metadata["NccAfter"]) > 0.9 and strain.metadata["QualityFlagged"] == "0"
    assert figures["flagged"] == 0 and figures["ncc_p50"] > 0.9
    # every received frame was sent, dropped, rejected, a reference, or is still in flight
    assert figures["received"] >= figures["sent"] + figures["dropped"] + figures["rejected"] + figures["references"]


class _TruncatedImage(pyigtl.ImageMessage):
    """An IMAGE whose pixel data stops short of the size it declares."""

    def _pack_content(self) -> bytes:
        return super()._pack_content()[:-64]


def test_malformed_input_is_reported_and_skipped_never_fatal() -> None:
    frames = _shifted_speckle([0, 1, 2, 3])
    nan = frames[1].copy()
    nan[3, 3] = np.nan
    bad = [
        image_message(nan, GEOMETRY, "RF"),
        pyigtl.ImageMessage(np.stack([frames[1], frames[2]]), device_name="RF"),  # a 2-slice volume
        _TruncatedImage(frames[1][None], device_name="RF"),
        pyigtl.StringMessage("hello", device_name="Probe"),  # unknown device
        image_message(frames[1][:5], GEOMETRY, "RF"),  # too short for the strain window
    ]
    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    with IgtlServer() as source, _stream(processor, source.port, timeout=5.0) as stream:
        viewer = IgtlClient(port=stream.output.port)
        try:
            deadline = time.monotonic() + 10
            while not (source.is_connected() and stream.output.is_connected()) and time.monotonic() < deadline:
                viewer.take(0.05)
            assert source.publish(image_message(frames[0], GEOMETRY, "RF"))  # the reference
            _collect(viewer, lambda got: stream.stats.counts["references"] == 1)
            for message in bad:  # one at a time, each answered by its STATUS
                assert source.publish(message)
                _collect(viewer, lambda got: len(_statuses(got)) == 1)
            assert source.publish(image_message(frames[2], GEOMETRY, "RF"))
            messages = _collect(viewer, lambda got: len(_strain(got)) == 1)
        finally:
            viewer.stop()
        figures = stream.figures()
    assert figures["rejected"] == 4 and figures["errors"] == 5 and figures["sent"] == 1
    result, _ = frame_from_message(_strain(messages)[0])
    assert np.median(result[30:-30]) == pytest.approx(0, abs=0.5)  # strain of a rigid shift


def test_source_killed_and_restarted_resumes_by_itself_and_reports_the_outage() -> None:
    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    scanner = Scanner(_source(), rate_hz=40)
    port = scanner.port
    with _stream(processor, port, timeout=0.3) as stream:
        viewer = IgtlClient(port=stream.output.port)
        try:
            _collect(viewer, lambda got: len(_strain(got)) >= 2)
            scanner.stop()  # the source goes away mid-stream
            lost = _collect(viewer, lambda got: any(getattr(m, "error_name", "") == "SourceLost" for m in got))
            scanner = Scanner(_source(), port=port, rate_hz=40)
            back = _collect(
                viewer,
                lambda got: len(_strain(got)) >= 2 and any(getattr(m, "error_name", "") == "Reconnected" for m in got),
            )
        finally:
            viewer.stop()
            scanner.stop()
        figures = stream.figures()
    assert _statuses(lost)[-1].code != STATUS_OK
    assert next(m for m in _statuses(back) if m.error_name == "Reconnected").code == STATUS_OK
    # at least the outage made here; the stopping scanner may accept one more connection before its socket closes
    # (an outage of no duration), and a machine loaded enough to delay frames past the 0.3 s timeout adds more
    outage = max(figures["outages"], key=lambda entry: entry["duration_s"])
    assert figures["reconnects"] >= 1 and outage["duration_s"] > 0
    assert outage["missed"] is None  # the restarted scanner counts from 0 again: unknown
    assert frame_index(_strain(back)[-1], "ReferenceIndex") == 0  # a new reference after the outage


def test_viewer_disconnecting_does_not_stall_processing() -> None:
    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    with Scanner(_source(), rate_hz=50) as scanner, _stream(processor, scanner.port) as stream:
        first = IgtlClient(port=stream.output.port)
        _collect(first, lambda got: len(_strain(got)) >= 2)
        first.stop()
        sent = stream.figures()["sent"]
        second = IgtlClient(port=stream.output.port)
        try:
            later = _collect(second, lambda got: len(_strain(got)) >= 2)
        finally:
            second.stop()
        assert stream.figures()["sent"] > sent
        assert frame_index(_strain(later)[-1]) > 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_soak_of_small_frames_keeps_memory_steady() -> None:
    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=10)
    with Scanner(_source(8, (64, 16)), rate_hz=200) as scanner, _stream(processor, scanner.port) as stream:
        viewer = IgtlClient(port=stream.output.port)
        try:
            _collect(viewer, lambda got: stream.figures()["sent"] >= 60)
            warm = _rss_bytes()
            _collect(viewer, lambda got: stream.figures()["sent"] >= 300, timeout=40)
            grown = _rss_bytes() / warm - 1
        finally:
            viewer.stop()
        figures = stream.figures()
    assert grown < 0.05, f"resident memory grew {100 * grown:.1f} % after warm-up"
    assert figures["errors"] == 0


def test_bench_stream_measures_with_scanner_and_viewer_in_processes_of_their_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = ["bench", "stream", "--baseline", "--sizes", "320x32", "--frames", "3", "--runs", "1"]
    assert main(arguments) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    size = figures["sizes"]["320x32"]
    assert figures["pipeline"] == "block matching" and size["fps"] > 0 and size["latency_p95_ms"] > 0
    assert size["received"][0] >= 4  # a reference frame and three more came from the scanner process
    assert size["end_to_end_p50_ms"] > 0  # measured by the viewer process on the strain it received


@pytest.mark.parametrize("bundle", ["tiny_bundle", "prealigned_bundle"])
def test_bench_throughput_step_gives_the_live_processors_strain(bundle: str, request: pytest.FixtureRequest) -> None:
    """What ``bench throughput`` times is what a stream computes: the same strain, frame by frame."""
    model = request.getfixturevalue(bundle)
    frames = _shifted_speckle([0, 1, 2, 3], (64, 32))
    estimator = StrainEstimator(model, device="cpu", refine=False)  # as bench throughput builds it: live options
    normalised = np.stack([normalise_frame(frame, estimator.normalisation) for frame in frames])
    step = model_and_strain(estimator, normalised, WINDOW_MM, 0.02)
    live = LiveStrainProcessor(model, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    for k, frame in enumerate(frames):
        strain, result = step(k), live.process(frame, 0.02)
        if k == 0:
            assert strain is None and result is None
        else:
            np.testing.assert_allclose(strain, result.strain, rtol=1e-5, atol=1e-5)


def test_bench_throughput_reports_frames_per_second_and_the_ratio(
    prealigned_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["bench", "throughput", "--model", str(prealigned_bundle), "--device", "cpu"]
    arguments += ["--sizes", "320x32", "--seconds", "0", "--runs", "1", "--per-reference", "3"]
    assert main(arguments) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    size = figures["sizes"]["320x32"]
    assert figures["suite"] == "throughput" and figures["device"] == "cpu" and figures["half"] is False
    assert size["fps"] > 0 and size["processor_fps"] > 0 and 0 < size["frame_p50_ms"] <= size["frame_p95_ms"]
    # the ratio is rounded to 2 decimals: on a slow machine that is more than 1 % of it
    assert size["ratio"] == pytest.approx(size["fps"] / size["original_reusenet_fps"], rel=0.01, abs=0.005)


# ---------------------------------------------------------------- hostile sources


class _RawSource:
    """An OpenIGTLink source on a free port of 127.0.0.1 that plays ``script(connection, number,
    stopped)`` on each connection it accepts (number 0, 1, ...): raw bytes no library would send.

    The port listens from construction on; connections are served (one at a time) from
    :meth:`start` on, so a test can first let its viewer connect.
    """

    def __init__(self, script: Callable[[socket.socket, int, threading.Event], None]) -> None:
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        number = 0
        while not self.stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                try:
                    self._script(connection, number, self.stopped)
                except OSError:  # the stream hung up on the bytes it was sent
                    pass
            number += 1


def _rf_message(index: int) -> bytes:
    frames = _shifted_speckle([0, 1, 2, 3])
    return image_message(frames[index % 4], GEOMETRY, "RF", metadata={FRAME_INDEX_KEY: str(index)}).pack()


def _play_frames(connection: socket.socket, stopped: threading.Event, count: int | None = None) -> None:
    """Good RF frames at 50 Hz, ``count`` of them or until the source stops."""
    index = 0
    while (count is None or index < count) and not stopped.wait(0.02):
        connection.sendall(_rf_message(index))
        index += 1


def _hold_open(connection: socket.socket, stopped: threading.Event) -> None:
    """Keep the connection until the other end closes it or the source stops."""
    connection.settimeout(0.05)
    while not stopped.is_set():
        try:
            if not connection.recv(4096):
                return
        except TimeoutError:
            continue


def _igtl_header(message_type: str, body_size: int, crc: int = 0, version: int = 1) -> bytes:
    return struct.pack("> H 12s 20s II Q Q", version, message_type.encode(), b"RF", 0, 0, body_size, crc)


def _wrong_checksum(message: bytes) -> bytes:
    """``message`` with the last byte of its CRC-64 field changed."""
    return message[:57] + bytes([message[57] ^ 0xFF]) + message[58:]


def _on_first_connection(defect):
    """A script: ``defect(connection, stopped)`` on the first connection, good frames on every later one."""

    def script(connection: socket.socket, number: int, stopped: threading.Event) -> None:
        if number == 0:
            defect(connection, stopped)
        else:
            _play_frames(connection, stopped)

    return script


def _survive(
    script, error_name: str, reconnects: int = 0
) -> tuple[dict[str, object], list[StatusMessage], list[logging.LogRecord]]:
    """Run a stream against a :class:`_RawSource` playing ``script`` until the viewer saw the STATUS
    ``error_name``, then two strain frames, and the stream counted ``reconnects`` reconnections (on a
    loaded machine strain of frames received before a disconnection can still follow its STATUS);
    returns the figures, the STATUS messages, the log."""

    def recovered(got: list[pyigtl.MessageBase]) -> bool:
        reported = [k for k, m in enumerate(got) if getattr(m, "error_name", "") == error_name]
        return bool(reported) and len(_strain(got[reported[0] :])) >= 2 and stream.figures()["reconnects"] >= reconnects

    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=WINDOW_MM, reference_every=None)
    source = _RawSource(script)
    handler = _Records()
    logging.getLogger("deepultrasound").addHandler(handler)
    try:
        with _stream(processor, source.port) as stream:
            viewer = IgtlClient(port=stream.output.port)
            try:
                _collect(viewer, lambda got: stream.output.is_connected())
                source.start()
                messages = _collect(viewer, recovered)
                figures, records = stream.figures(), list(handler.records)  # before the source goes away
            finally:
                viewer.stop()
                source.stop()
    finally:
        logging.getLogger("deepultrasound").removeHandler(handler)
    return figures, _statuses(messages), records


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _one_line_reports(records: list[logging.LogRecord], error_name: str) -> list[str]:
    """The log lines naming ``error_name``; each must be one line without a traceback."""
    lines = [record.getMessage() for record in records if error_name in record.getMessage()]
    assert all("\n" not in line for line in lines) and not any(record.exc_info for record in records)
    return lines


def test_oversized_message_is_reported_and_the_stream_recovers_with_back_off(capfd: pytest.CaptureFixture) -> None:
    """An IMAGE header declaring 2^62 body bytes, twice: no allocation, reported, frames flow after."""

    def script(connection: socket.socket, number: int, stopped: threading.Event) -> None:
        if number < 2:
            connection.sendall(_igtl_header("IMAGE", 2**62))
            _hold_open(connection, stopped)
        else:
            _play_frames(connection, stopped)

    figures, statuses, records = _survive(script, "MessageTooLarge", reconnects=1)
    too_large = [m for m in statuses if m.error_name == "MessageTooLarge"]
    assert len(too_large) == 2 and too_large[0].code == STATUS_OVERFLOW
    assert str(2**62) in too_large[0].status_string
    assert figures["bad_messages"] == 2 and figures["disconnects"] >= 2 and figures["reconnects"] >= 1
    assert len(_one_line_reports(records, "MessageTooLarge")) == 2
    assert "Traceback" not in capfd.readouterr().err


def test_connection_reset_by_the_source_is_one_log_line_without_a_traceback(capfd: pytest.CaptureFixture) -> None:
    def reset(connection: socket.socket, stopped: threading.Event) -> None:
        _play_frames(connection, stopped, count=3)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    figures, statuses, records = _survive(_on_first_connection(reset), "ConnectionLost", reconnects=1)
    assert next(m for m in statuses if m.error_name == "ConnectionLost").code == STATUS_CONNECTION_LOST
    assert figures["disconnects"] >= 1 and figures["reconnects"] == 1
    assert _one_line_reports(records, "ConnectionLost")
    assert "Traceback" not in capfd.readouterr().err


def _truncated_then_close(connection: socket.socket, stopped: threading.Event) -> None:
    message = _rf_message(0)
    connection.sendall(message[: len(message) // 2])


def _garbage(connection: socket.socket, stopped: threading.Event) -> None:
    connection.sendall(b"\xde\xad\xbe\xef" * 50)
    _hold_open(connection, stopped)


def _wrong_crc_then_frames(connection: socket.socket, stopped: threading.Event) -> None:
    connection.sendall(_wrong_checksum(_rf_message(0)))
    _play_frames(connection, stopped)


def _short_image_then_frames(connection: socket.socket, stopped: threading.Event) -> None:
    connection.sendall(_TruncatedImage(_shifted_speckle([0])[0][None], device_name="RF").pack())
    _play_frames(connection, stopped)


def _frames_then_close(connection: socket.socket, stopped: threading.Event) -> None:
    _play_frames(connection, stopped, count=4)


@pytest.mark.parametrize(
    ("defect", "error_name", "counted", "reconnects"),
    [
        (_truncated_then_close, "TruncatedMessage", {"bad_messages": 1, "disconnects": 1}, 1),
        (_garbage, "MalformedHeader", {"bad_messages": 1, "disconnects": 1}, 1),
        (_wrong_crc_then_frames, "ChecksumError", {"bad_messages": 1, "disconnects": 0}, 0),
        (_short_image_then_frames, "MalformedMessage", {"rejected": 1, "bad_messages": 0, "disconnects": 0}, 0),
        (_frames_then_close, "ConnectionLost", {"bad_messages": 0, "disconnects": 1}, 1),
    ],
    ids=["truncated-then-close", "garbage-bytes", "wrong-crc", "image-smaller-than-its-size", "disconnect-reconnect"],
)
def test_broken_source_is_reported_in_one_line_counted_and_the_stream_goes_on(
    defect, error_name: str, counted: dict[str, int], reconnects: int, capfd: pytest.CaptureFixture
) -> None:
    figures, statuses, records = _survive(_on_first_connection(defect), error_name, reconnects)
    assert sum(m.error_name == error_name for m in statuses) == 1
    assert {name: figures[name] for name in counted} == counted
    assert figures["reconnects"] == reconnects
    assert len(_one_line_reports(records, error_name)) == 1
    assert "Traceback" not in capfd.readouterr().err


def _serve_one_frame(frame: np.ndarray, max_message_bytes: int) -> tuple[list[pyigtl.MessageBase], list[LinkEvent]]:
    """What a client with ``max_message_bytes`` makes of one IMAGE of ``frame``: messages, events."""
    with IgtlServer() as server:
        client = IgtlClient(port=server.port, max_message_bytes=max_message_bytes)
        try:
            _collect(client, lambda got: server.is_connected(), timeout=10)
            assert server.publish(image_message(frame, GEOMETRY, "RF"))
            messages: list[pyigtl.MessageBase] = []
            events: list[LinkEvent] = []
            deadline = time.monotonic() + 10
            while not (messages or events) and time.monotonic() < deadline:
                messages += client.take(0.1)
                events += client.take_events()
            return messages, events
        finally:
            client.stop()


def test_message_size_bound_is_configurable_and_checked() -> None:
    """A client refuses a frame over its ``max_message_bytes``; the default takes a 4096 x 1024 float32 frame."""
    assert DEFAULT_MAX_MESSAGE_BYTES >= 4096 * 1024 * 4 + 1024
    frame = np.arange(96 * 16, dtype=np.float32).reshape(96, 16)  # 6 KiB of pixels
    messages, events = _serve_one_frame(frame, 4096)
    assert not messages and [event.problem for event in events] == [LinkProblem.MESSAGE_TOO_LARGE]
    assert "4096 accepted" in events[0].text
    messages, events = _serve_one_frame(frame, DEFAULT_MAX_MESSAGE_BYTES)
    assert not events and np.array_equal(frame_from_message(messages[0])[0], frame)
    with pytest.raises(InputError, match="at least 1 byte"):
        StreamConfig(max_message_bytes=0)


def test_stream_command_refuses_a_message_bound_under_one_byte(capsys: pytest.CaptureFixture) -> None:
    assert main(["stream", "--max-message-mb", "0", "--baseline", "--duration", "0"]) == 2
    assert "at least 1 byte" in capsys.readouterr().err
