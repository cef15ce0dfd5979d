"""The live strain pipeline: receive -> normalise + network -> strain + B-mode -> send, one thread per stage.

::

    source (IMAGE "RF") --> receive --slot--> network --slot--> strain --slot--> send --> "Strain", "BMode"

Each hand-over is a :class:`LatestSlot`: a slow stage never builds a backlog, the newest frame wins
and every frame replaced unread is counted as dropped (the client's inbox, one message per device,
is the first such slot). The network stage runs :meth:`LiveStrainProcessor.displacement`, the
strain stage :meth:`LiveStrainProcessor.finish`, so strain and B-mode of one frame overlap with the
network of the next.

Reliability:

- a frame that cannot be used (wrong dimensions, dtype, NaN, a message that cannot be decoded, a
  device other than the RF one) is skipped and reported as a STATUS message on the output port,
  in the log and in :class:`StreamStats`; the stream goes on;
- a message that cannot be read (a header that is not OpenIGTLink or declares more than
  ``max_message_bytes``, a wrong CRC-64, a connection closed mid-message) and every lost
  connection are reported the same way, in one line each (:class:`IgtlClient` events); the
  client reconnects with back-off for as long as the stream runs, and the first frame after a
  lost connection starts from a new reference;
- when no frame arrives for ``source_timeout_s`` the source counts as lost: STATUS "SourceLost",
  a new connection after a back-off that doubles up to ``backoff_max_s``; when frames come back
  the outage is reported (duration, frames missed by ``FrameIndex`` when the source numbers
  frames) and the processor starts from a new reference;
- the output server drops results while its client is gone or slow (counted as ``unsent``):
  nothing waits for a viewer.

Every Strain and BMode image carries the result's quality figure in its metadata
(:data:`~deepultrasound.elastography.metrics.QUALITY_KEYS`: ``NccBefore``, ``NccAfter``,
``QualityFlagged`` 0/1, beside ``FrameIndex`` and ``ReferenceIndex``); when results become
flagged a STATUS "LowQuality" goes out, and "QualityOK" when they recover; the status line ends
with the median NCC after warping and the count of flagged results.

Latency is measured from the moment the receive stage takes a frame to the moment its results
are handed to the output server (``pipeline``), per stage, and - when the source stamps frames
with this machine's clock, as a loopback scanner does - from the source timestamp (``source``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from deepultrasound.elastography.live.processor import FrameResult, LiveStrainProcessor, PendingPair
from deepultrasound.elastography.metrics import StrainQuality
from deepultrasound.errors import InputError
from deepultrasound.streaming.igtl import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_INDEX_KEY,
    REFERENCE_INDEX_KEY,
    STATUS_DEVICE_NOT_READY,
    STATUS_NOT_FOUND,
    STATUS_OK,
    STATUS_UNKNOWN_ERROR,
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

LOW_QUALITY_STATUS, QUALITY_OK_STATUS = "LowQuality", "QualityOK"
"""Error names of the STATUS messages sent when results become flagged, and when they recover."""
logger = logging.getLogger(__name__)

_WAKE_S = 0.1  # how often an idle stage checks for stop


@dataclass(frozen=True)
class StreamConfig:
    """Where the stream reads and serves, and how it recovers.

    Attributes:
        source_host, source_port, source_device: the RF source (an OpenIGTLink server) and the
            IMAGE device name to use from it.
        serve_host, serve_port: where strain and B-mode are served (port 0: a free port).
        strain_device, bmode_device: device names of the outputs (STATUS goes out as the strain device).
        source_timeout_s: no frame for this long means the source is lost.
        backoff_initial_s, backoff_max_s: wait before reconnecting, doubled after each failure.
        max_message_bytes: largest message body read from the source; a larger one is reported
            and its connection dropped.
    """

    source_host: str = "127.0.0.1"
    source_port: int = 18944
    source_device: str = "RF"
    serve_host: str = "127.0.0.1"
    serve_port: int = 18945
    strain_device: str = "Strain"
    bmode_device: str = "BMode"
    source_timeout_s: float = 2.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise InputError(f"the largest message must be at least 1 byte, got {self.max_message_bytes}")


@dataclass
class _Frame:
    """A received frame on its way through the stages."""

    frame: np.ndarray
    geometry: FrameGeometry
    source_index: int | None
    source_timestamp: float
    taken: float  # perf_counter when the receive stage took it
    new_session: bool  # first frame after (re)connecting: start from a new reference
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _SourceTrack:
    """What the receive stage remembers across connections: when the source was lost (perf_counter,
    None while frames flow) and the last frame number it sent."""

    lost_at: float | None = None
    last_index: int | None = None

    def lose(self) -> None:
        if self.lost_at is None:
            self.lost_at = time.perf_counter()


@dataclass
class _Pending:
    frame: _Frame
    pending: PendingPair
    reference_source_index: int | None


@dataclass
class _Result:
    frame: _Frame
    result: FrameResult
    reference_source_index: int | None


class StreamStats:
    """Counters and recent timings of a stream (thread-safe; every stage writes, anyone reads).

    Counters: ``received`` RF frames taken or overwritten; ``dropped`` replaced unread by a newer
    frame at any stage; ``rejected`` skipped as unusable (STATUS sent); ``references`` frames
    that became a reference (no output); ``sent`` results handed to the output server; ``unsent``
    of those, dropped because no viewer was connected or it was slow; ``errors`` STATUS errors
    sent; ``bad_messages`` source messages that could not be read (too large, not OpenIGTLink,
    wrong CRC, cut off); ``disconnects`` source connections lost; ``reconnects`` times frames
    came back after the source was lost; ``missed`` frames numbered by the source that never arrived;
    ``flagged`` results whose quality figure is flagged (:class:`StrainQuality`: do not trust them).
    The recent quality figures give the median NCC after warping (``ncc_p50``).
    """

    def __init__(self, window: int = 2000) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "received",
                "dropped",
                "rejected",
                "references",
                "sent",
                "errors",
                "bad_messages",
                "disconnects",
                "reconnects",
                "missed",
                "flagged",
            ),
            0,
        )
        self._ncc_after: deque[float] = deque(maxlen=window)
        self.outages: list[dict[str, float | int | None]] = []
        self.last_error = ""
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._source_latency_ms: deque[float] = deque(maxlen=window)
        self._stages: dict[str, deque[float]] = {}
        self._sent_at: deque[float] = deque(maxlen=window)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.counts[name] += count

    def error(self, text: str) -> None:
        with self._lock:
            self.counts["errors"] += 1
            self.last_error = text

    def outage(self, duration_s: float, missed: int | None) -> None:
        with self._lock:
            self.counts["reconnects"] += 1
            self.counts["missed"] += missed or 0
            self.outages.append({"duration_s": round(duration_s, 3), "missed": missed})

    def record(self, latency_ms: float, source_latency_ms: float | None, stages_ms: dict[str, float]) -> None:
        with self._lock:
            self.counts["sent"] += 1
            self._sent_at.append(time.perf_counter())
            self._latency_ms.append(latency_ms)
            if source_latency_ms is not None:
                self._source_latency_ms.append(source_latency_ms)
            for name, value in stages_ms.items():
                self._stages.setdefault(name, deque(maxlen=self._latency_ms.maxlen)).append(value)

    def quality(self, quality: StrainQuality) -> None:
        """Count one result's quality figure (send stage)."""
        with self._lock:
            self.counts["flagged"] += int(quality.flagged)
            self._ncc_after.append(quality.ncc_after)

    def latencies_ms(self) -> list[float]:
        """Pipeline latency of the recent results, in the order they were sent."""
        with self._lock:
            return list(self._latency_ms)

    def snapshot(self, unsent: int = 0) -> dict[str, object]:
        """Figures of the recent window: fps, latency p50/p95 in ms, per-stage medians, all counters."""
        with self._lock:
            sent_at = list(self._sent_at)
            latency = np.array(self._latency_ms)
            source = np.array(self._source_latency_ms)
            ncc_after = np.array(self._ncc_after)
            stages = {name: round(float(np.median(values)), 2) for name, values in self._stages.items() if values}
            counts = dict(self.counts)
            outages = list(self.outages)
        fps = (len(sent_at) - 1) / (sent_at[-1] - sent_at[0]) if len(sent_at) > 1 and sent_at[-1] > sent_at[0] else 0.0

        def percentile(values: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(values, q)), 2) if values.size else None

        return {
            "fps": round(fps, 2),
            "latency_p50_ms": percentile(latency, 50),
            "latency_p95_ms": percentile(latency, 95),
            "source_latency_p50_ms": percentile(source, 50),
            "source_latency_p95_ms": percentile(source, 95),
            "stages_ms": stages,
            "ncc_p50": round(float(np.nanmedian(ncc_after)), 3) if ncc_after.size else None,
            **counts,
            "unsent": unsent,
            "outages": outages,
        }


def status_line(figures: dict[str, object]) -> str:
    """One readable line of :meth:`StreamStats.snapshot` figures."""
    return (
        f"{figures['fps']:.1f} fps | latency p50 {figures['latency_p50_ms']} ms p95 {figures['latency_p95_ms']} ms | "
        f"sent {figures['sent']} dropped {figures['dropped']} rejected {figures['rejected']} "
        f"errors {figures['errors']} reconnects {figures['reconnects']} "
        f"bad messages {figures['bad_messages']} disconnects {figures['disconnects']} | "
        f"quality NCC p50 {figures['ncc_p50']} flagged {figures['flagged']}"
    )


class StrainStream:
    """Runs the pipeline in background threads until :meth:`stop`.

    Args:
        processor: the per-frame strain (owned by the network stage thread from :meth:`start` on).
        config: endpoints and recovery settings.
        on_result: optional callback ``(FrameResult, geometry, source_index, reference_source_index)``
            run by the send stage for every result (e.g. to record it); it must be quick.

    Attributes:
        output: the output server (``output.port`` is the port actually served).
        stats: :class:`StreamStats`.
    """

    def __init__(self, processor: LiveStrainProcessor, config: StreamConfig, on_result=None) -> None:
        self.processor = processor
        self.config = config
        self.on_result = on_result
        self._flagged = False  # whether the last result sent was flagged (send stage)
        self.stats = StreamStats()
        self.output = IgtlServer(config.serve_port, config.serve_host)
        self._stop = threading.Event()
        self._received: LatestSlot[_Frame] = LatestSlot()
        self._estimated: LatestSlot[_Pending] = LatestSlot()
        self._finished: LatestSlot[_Result] = LatestSlot()
        self._threads = [
            threading.Thread(
                target=self._guarded, args=(stage,), name=f"stream-{stage.__name__.strip('_')}", daemon=True
            )
            for stage in (self._receive_stage, self._network_stage, self._strain_stage, self._send_stage)
        ]

    # ------------------------------------------------------------------ control

    def start(self) -> StrainStream:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every stage (started or not), close the connections; returns when all threads ended."""
        self._stop.set()
        for slot in (self._received, self._estimated, self._finished):
            slot.close()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        self.output.stop()

    def figures(self) -> dict[str, object]:
        """:meth:`StreamStats.snapshot` with the drops of every slot and the output's unsent count."""
        figures = self.stats.snapshot(self.output.unsent)
        figures["dropped"] = int(figures["dropped"]) + sum(
            slot.dropped for slot in (self._received, self._estimated, self._finished)
        )
        return figures

    def __enter__(self) -> StrainStream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ reporting

    def _report(self, code: int, error_name: str, text: str) -> None:
        """STATUS to the viewer, log, counters. Called from any stage."""
        if code == STATUS_OK:
            logger.info("%s", text)
        else:
            self.stats.error(text)
            logger.warning("%s: %s", error_name, text)
        self.output.report(StatusMessage(code, text, error_name, device_name=self.config.strain_device))

    def _report_quality(self, quality: StrainQuality, index: int | None) -> None:
        """Count a result's quality figure; STATUS "LowQuality" when results become flagged,
        "QualityOK" when they recover (one message per change, not per frame). Send stage only."""
        self.stats.quality(quality)
        if quality.flagged == self._flagged:
            return
        self._flagged = quality.flagged
        state = "flagged: do not trust the strain" if quality.flagged else "trustworthy again"
        self._report(
            STATUS_OK,
            LOW_QUALITY_STATUS if quality.flagged else QUALITY_OK_STATUS,
            f"frame {index}: strain {state} (NCC {quality.ncc_before:.3f} before warping, "
            f"{quality.ncc_after:.3f} after)",
        )

    def _guarded(self, stage) -> None:
        """Run a stage; an unexpected exception is reported and the stage restarted, never fatal."""
        while not self._stop.is_set():
            try:
                stage()
                return
            except Exception as error:  # a worker thread must report, not die silently
                logger.exception("stage %s failed", stage.__name__)
                self._report(STATUS_UNKNOWN_ERROR, type(error).__name__[:20], f"{stage.__name__}: {error}")

    # ------------------------------------------------------------------ stages

    def _receive_stage(self) -> None:
        """Connect, take frames, reconnect with back-off. Owns the client."""
        config = self.config
        backoff = config.backoff_initial_s
        track = _SourceTrack()
        while not self._stop.is_set():
            client = IgtlClient(
                config.source_host,
                config.source_port,
                max_message_bytes=config.max_message_bytes,
                reconnect_initial_s=config.backoff_initial_s,
                reconnect_max_s=config.backoff_max_s,
            )
            try:
                got_any = self._receive_session(client, track)
            finally:
                client.stop()
            if got_any is None:  # stopped
                return
            if got_any:
                backoff = config.backoff_initial_s
                track.lose()
                self._report(
                    STATUS_DEVICE_NOT_READY,
                    "SourceLost",
                    f"no frame from {config.source_host}:{config.source_port} for {config.source_timeout_s} s; "
                    "reconnecting",
                )
            else:
                self._stop.wait(backoff)
                backoff = min(2 * backoff, config.backoff_max_s)

    def _receive_session(self, client: IgtlClient, track: _SourceTrack) -> bool | None:
        """Take frames from one client until the source goes quiet. Returns whether frames came,
        or None when stopped."""
        config = self.config
        overwritten = 0
        got_any = False
        quiet_since = time.perf_counter()
        while not self._stop.is_set():
            messages = client.take(_WAKE_S)
            for event in client.take_events():
                self._link_problem(event, track)
            if not messages:
                if time.perf_counter() - quiet_since > config.source_timeout_s:
                    return got_any
                continue
            quiet_since = time.perf_counter()
            for message in messages:
                if message.device_name != config.source_device:
                    self._report(
                        STATUS_NOT_FOUND,
                        "UnknownDevice",
                        f"{message.message_type} message from unknown device {message.device_name!r} ignored "
                        f"(reading {config.source_device!r})",
                    )
                    continue
                index = frame_index(message)
                new_session = not got_any or track.lost_at is not None
                if track.lost_at is not None:
                    self._source_back(index, track)
                got_any = True
                track.last_index = index if index is not None else track.last_index
                self._accept(message, index, new_session)
            if client.overwritten(config.source_device) > overwritten:  # replaced in the client's inbox unread
                newly = client.overwritten(config.source_device) - overwritten
                overwritten += newly
                self.stats.add("received", newly)
                self.stats.add("dropped", newly)
        return None

    def _link_problem(self, event: LinkEvent, track: _SourceTrack) -> None:
        """Count and report a problem of the source connection; a lost connection loses the source."""
        problem = event.problem
        if problem is LinkProblem.MALFORMED_MESSAGE:  # a frame that arrived but cannot be used
            self.stats.add("rejected")
        elif problem is not LinkProblem.CONNECTION_LOST:
            self.stats.add("bad_messages")
        if problem.drops_connection:
            self.stats.add("disconnects")
            track.lose()
        self._report(problem.code, problem.error_name, event.text)

    def _source_back(self, index: int | None, track: _SourceTrack) -> None:
        """Report the outage that ends with frame ``index``."""
        last = track.last_index
        missed = index - last - 1 if index is not None and last is not None and index > last else None
        outage = time.perf_counter() - track.lost_at
        track.lost_at = None
        self.stats.outage(outage, missed)
        self._report(
            STATUS_OK,
            "Reconnected",
            f"source back after {outage:.2f} s; frames missed: {'unknown' if missed is None else missed}; "
            "new reference frame",
        )

    def _accept(self, message, index: int | None, new_session: bool) -> None:
        self.stats.add("received")
        started = time.perf_counter()
        try:
            frame, geometry = frame_from_message(message)
            if frame.ndim != 2 or not np.issubdtype(frame.dtype, np.number) or np.iscomplexobj(frame):
                raise InputError(f"unsupported RF frame {frame.shape} {frame.dtype}")
        except InputError as error:
            self.stats.add("rejected")
            self._report(STATUS_UNKNOWN_ERROR, "InputError", f"frame {index}: {error}")
            return
        item = _Frame(frame, geometry, index, message.timestamp, started, new_session)
        item.timings_ms["receive"] = 1000.0 * (time.perf_counter() - started)
        self._received.put(item)

    def _network_stage(self) -> None:
        """Owns the processor: checks, normalisation, network."""
        reference_source_index: int | None = None
        while not self._stop.is_set():
            item = self._received.get(_WAKE_S)
            if item is None:
                continue
            if item.new_session:
                self.processor.reset()
            try:
                pending = self.processor.displacement(item.frame, item.geometry.axial_spacing_mm)
            except InputError as error:
                self.stats.add("rejected")
                self._report(STATUS_UNKNOWN_ERROR, "InputError", f"frame {item.source_index}: {error}")
                continue
            if pending is None:
                self.stats.add("references")
                reference_source_index = item.source_index
                continue
            item.timings_ms.update(pending.timings_ms)
            self._estimated.put(_Pending(item, pending, reference_source_index))

    def _strain_stage(self) -> None:
        while not self._stop.is_set():
            item = self._estimated.get(_WAKE_S)
            if item is None:
                continue
            result = self.processor.finish(item.pending)
            item.frame.timings_ms.update(result.timings_ms)
            self._finished.put(_Result(item.frame, result, item.reference_source_index))

    def _send_stage(self) -> None:
        config = self.config
        while not self._stop.is_set():
            item = self._finished.get(_WAKE_S)
            if item is None:
                continue
            started = time.perf_counter()
            frame, result = item.frame, item.result
            rows = self.processor.kept_rows(frame.frame.shape[0])
            geometry = frame.geometry.shifted_rows(rows.start)
            metadata = result.quality.as_metadata()
            if frame.source_index is not None:
                metadata[FRAME_INDEX_KEY] = str(frame.source_index)
            if item.reference_source_index is not None:
                metadata[REFERENCE_INDEX_KEY] = str(item.reference_source_index)
            self.output.publish(
                image_message(result.strain, geometry, config.strain_device, frame.source_timestamp, metadata),
                image_message(result.bmode_db, geometry, config.bmode_device, frame.source_timestamp, metadata),
            )
            self._report_quality(result.quality, frame.source_index)
            if self.on_result is not None:
                self.on_result(result, geometry, frame.source_index, item.reference_source_index)
            frame.timings_ms["send"] = 1000.0 * (time.perf_counter() - started)
            latency = 1000.0 * (time.perf_counter() - frame.taken)
            source_latency = 1000.0 * (time.time() - frame.source_timestamp)
            self.stats.record(latency, source_latency if 0 <= source_latency < 60_000 else None, frame.timings_ms)
