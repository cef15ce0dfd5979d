"""Live strain: every RF frame that arrives in a volume node becomes a strain and a B-mode frame.

OpenIGTLinkIF updates the incoming RF volume node on every IMAGE message: IJK-to-RAS and voxels
within one modification (``StartModify``/``EndModify``), so ``ImageDataModifiedEvent`` comes with
the whole frame in place; any other source must update the node the same way. The event may come
twice for one frame (new image data, then its voxels): a frame whose image data was not modified
since the last one taken is not taken again.

:class:`LiveStrainLogic` observes that event; its handler only copies the frame and its geometry
into a one-slot mailbox, so the application stays responsive.
A worker thread runs the engine's ``LiveStrainProcessor`` on the latest frame: a frame that
arrives while another one waits replaces it (the latest frame wins) and is counted as skipped.
Finished frames are written into the output volume nodes by :meth:`LiveStrainLogic.poll`, on the
main thread, because MRML nodes belong to the thread that owns the scene: the frame handler polls,
and the widget also polls from a timer so that results appear between frames too.

Thread ownership:

- main thread: the MRML nodes, the observer, the recorder, :meth:`~LiveStrainLogic.poll`;
- worker thread: the processor (one frame at a time) while live processing runs;
- both, under ``_condition``: the mailbox, the finished results, counters and the last error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, newFrameTime, volumeGeometry

from .offline import setQualityAttributes
from .recording import StrainRecorder


@dataclass(frozen=True)
class LiveCounters:
    """What happened to the frames since :meth:`LiveStrainLogic.start`.

    Once processing has stopped, ``framesIn == framesProcessed + framesSkipped + errors`` (as long
    as the output refuses no processed frame: it refuses results whose size differs from the frame).

    Attributes:
        framesIn: frames received from the RF volume node.
        framesSkipped: frames replaced by a newer one before the worker could take them.
        framesProcessed: frames the processor finished, references included.
        referenceFrames: processed frames that became the reference (no strain for them).
        framesShown: strain frames written into the output volumes.
        errors: frames the processor or the output refused (see ``LiveStrainLogic.lastError``).
    """

    framesIn: int = 0
    framesSkipped: int = 0
    framesProcessed: int = 0
    referenceFrames: int = 0
    framesShown: int = 0
    errors: int = 0


@dataclass(frozen=True)
class _Frame:
    """One received RF frame: ``(H, W)`` float32 voxels, where they lie, arrival index and time."""

    rf: np.ndarray
    geometry: VolumeGeometry
    index: int
    arrivedAt: float


@dataclass(frozen=True)
class _Finished:
    frame: _Frame
    result: object  # the engine's FrameResult


class LiveStrainLogic(slicer.util.VTKObservationMixin):
    """Strain of each frame arriving in an RF volume node, written into strain and B-mode volume nodes.

    Usage::

        live = LiveStrainLogic()
        live.start(rfVolume, strainVolume, bmodeVolume, createLiveProcessor(method, 10, None))
        ...                                  # frames arrive; call live.poll() from a timer
        live.stop()

    ``processor`` is anything with ``process(frame (H, W), axial_spacing_mm) -> FrameResult | None``
    and ``reset()``, as ``deepultrasound.elastography.live.LiveStrainProcessor``.

    Attributes (main thread):
        rfVolume, strainVolume, bmodeVolume: the nodes of the last :meth:`start`.
        recorder: where shown frames are recorded; may be set or cleared while running.
        lastTimingsMs: stage timings of the last shown frame in ms (the processor's, and
            ``latency`` from the frame's arrival to its display).
        lastQuality: the quality figure of the last shown frame (``FrameResult.quality``; also
            the strain node's attributes, see :func:`.offline.setQualityAttributes`), None before one.
    """

    def __init__(self) -> None:
        slicer.util.VTKObservationMixin.__init__(self)
        self._condition = threading.Condition()
        # Shared between the main thread and the worker, guarded by _condition.
        self._pending: _Frame | None = None
        self._finished: list[_Finished] = []
        self._busy = False
        self._stopRequested = False
        self._counters = LiveCounters()
        self._lastError = ""
        # Main thread only.
        self._worker: threading.Thread | None = None
        self._processor = None
        self._startedAt = 0.0
        self._lastImageMTime = -1  # VTK modification time of the last frame taken: a repeated event is no new frame
        self.rfVolume: slicer.vtkMRMLScalarVolumeNode | None = None
        self.strainVolume: slicer.vtkMRMLScalarVolumeNode | None = None
        self.bmodeVolume: slicer.vtkMRMLScalarVolumeNode | None = None
        self.recorder: StrainRecorder | None = None
        self.lastTimingsMs: dict[str, float] = {}
        self.lastQuality = None

    # Control (main thread).

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(
        self,
        rfVolume: slicer.vtkMRMLScalarVolumeNode,
        strainVolume: slicer.vtkMRMLScalarVolumeNode,
        bmodeVolume: slicer.vtkMRMLScalarVolumeNode,
        processor,
        recorder: StrainRecorder | None = None,
    ) -> None:
        """Observe ``rfVolume`` and process every frame that arrives from now on.

        Args:
            rfVolume: the incoming RF frames, one slice ``(1, H, W)`` per update (J axial, I lateral).
            strainVolume: receives the axial strain in % of the latest processed frame, same grid.
            bmodeVolume: receives its B-mode in dB, same grid.
            processor: see the class docstring; it is reset here.
            recorder: also keep every shown frame in these sequences.

        Raises:
            ValueError: a missing or vector volume, the same node as input and output, or
                processing that is already running.
        """
        if self.running:
            raise ValueError("Live strain is already running: stop it before starting again")
        if rfVolume is None or rfVolume.IsA("vtkMRMLVectorVolumeNode"):
            raise ValueError("Select the incoming RF volume (a scalar volume updated by the OpenIGTLink connection)")
        if strainVolume is None or bmodeVolume is None:
            raise ValueError("Live strain needs a strain and a B-mode output volume")
        if len({rfVolume.GetID(), strainVolume.GetID(), bmodeVolume.GetID()}) != 3:
            raise ValueError(f"The RF volume '{rfVolume.GetName()}' and the outputs must be three different volumes")
        processor.reset()
        self._processor = processor
        self.rfVolume, self.strainVolume, self.bmodeVolume, self.recorder = (
            rfVolume,
            strainVolume,
            bmodeVolume,
            recorder,
        )
        with self._condition:
            self._pending, self._finished, self._busy, self._stopRequested = None, [], False, False
            self._counters, self._lastError = LiveCounters(), ""
        self.lastTimingsMs, self.lastQuality = {}, None
        self._lastImageMTime = -1
        self._startedAt = time.perf_counter()
        self._worker = threading.Thread(target=self._work, name="DeepUSE live strain", daemon=True)
        self._worker.start()
        self.addObserver(rfVolume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onImageDataModified)

    def stop(self) -> None:
        """Stop observing, let the worker finish its current frame, and show what it finished.

        A frame still waiting for the worker is dropped and counted as skipped.
        """
        if not self.running:
            return
        self.removeObserver(self.rfVolume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onImageDataModified)
        with self._condition:
            self._stopRequested = True
            if self._pending is not None:
                self._pending = None
                self._count(framesSkipped=1)
            self._condition.notify_all()
        self._worker.join()
        self._worker, self._processor = None, None
        self.poll()

    # Results (main thread).

    def poll(self) -> bool:
        """Write the frames the worker finished into the output volumes (and the recorder).

        Returns:
            Whether a new strain frame was written.
        """
        with self._condition:
            finished, self._finished = self._finished, []
        for item in finished:
            self._show(item)
        return bool(finished)

    def waitForResult(self, timeoutS: float) -> bool:
        """Block until the worker finishes a strain frame, or ``timeoutS`` seconds pass, then :meth:`poll`.

        For scripts and tests; the application polls from a timer instead.
        """
        with self._condition:
            self._condition.wait_for(lambda: bool(self._finished), timeout=timeoutS)
        return self.poll()

    def waitUntilIdle(self, timeoutS: float) -> bool:
        """Block until no frame waits or is being processed (or ``timeoutS`` passes), then :meth:`poll`.

        Returns:
            Whether the worker became idle in time.
        """
        with self._condition:
            idle = self._condition.wait_for(lambda: self._pending is None and not self._busy, timeout=timeoutS)
        self.poll()
        return idle

    @property
    def counters(self) -> LiveCounters:
        with self._condition:
            return self._counters

    @property
    def lastError(self) -> str:
        """The message of the last refused frame, ``""`` when none was."""
        with self._condition:
            return self._lastError

    def statusText(self) -> str:
        """One line for the status label: frame counts, frame rate and the last stage timings."""
        counters = self.counters
        elapsed = time.perf_counter() - self._startedAt if self._startedAt else 0.0
        rate = counters.framesProcessed / elapsed if elapsed > 0 else 0.0
        text = (
            f"{counters.framesIn} frames in, {counters.framesProcessed} processed "
            f"({counters.referenceFrames} references), {counters.framesSkipped} skipped, {counters.errors} errors; "
            f"{rate:.1f} frames/s"
        )
        if self.lastTimingsMs:
            text += "; " + ", ".join(f"{stage} {ms:.0f} ms" for stage, ms in self.lastTimingsMs.items())
        if self.lastQuality is not None:
            quality = self.lastQuality
            text += (
                f"; FLAGGED frame (NCC {quality.ncc_after:.2f} after warping): do not trust this strain"
                if quality.flagged
                else f"; quality NCC {quality.ncc_after:.2f}"
            )
        lastError = self.lastError
        return text + (f"; last error: {lastError}" if lastError else "")

    # Frame handler (main thread): keep it short.

    def _onImageDataModified(self, volumeNode, event) -> None:
        frameTime = newFrameTime(volumeNode, self._lastImageMTime)
        if frameTime is None:
            return
        self._lastImageMTime = frameTime
        voxels = slicer.util.arrayFromVolume(volumeNode)
        if voxels.ndim != 3 or voxels.shape[0] != 1:
            with self._condition:
                self._refuse(
                    f"RF frame {self._counters.framesIn} has shape {voxels.shape}: expected one scalar slice (1, H, W)"
                )
                self._count(framesIn=1)
            return
        rf, geometry, arrivedAt = np.array(voxels[0], dtype=np.float32), volumeGeometry(volumeNode), time.perf_counter()
        with self._condition:
            if self._pending is not None:
                self._count(framesSkipped=1)
            self._pending = _Frame(rf, geometry, self._counters.framesIn, arrivedAt)
            self._count(framesIn=1)
            self._condition.notify_all()
        self.poll()

    # Worker thread.

    def _work(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending is not None or self._stopRequested)
                if self._stopRequested:
                    return
                frame, self._pending, self._busy = self._pending, None, True
            try:
                result = self._processor.process(frame.rf, float(frame.geometry.spacing[1]))
                error = ""
            except Exception as exception:  # reported through the counters and lastError; the stream goes on
                result, error = None, f"frame {frame.index}: {exception}"
            with self._condition:
                self._busy = False
                if error:
                    self._refuse(error)
                elif result is None:
                    self._count(framesProcessed=1, referenceFrames=1)
                else:
                    self._count(framesProcessed=1)
                    self._finished.append(_Finished(frame, result))
                self._condition.notify_all()

    # Helpers; callers hold _condition.

    def _count(self, **increments: int) -> None:
        counters = self._counters
        self._counters = replace(counters, **{name: getattr(counters, name) + n for name, n in increments.items()})

    def _refuse(self, message: str) -> None:
        self._count(errors=1)
        self._lastError = message

    # Output (main thread).

    def _show(self, item: _Finished) -> None:
        strain, bmode = item.result.strain, item.result.bmode_db
        if strain.shape != item.frame.rf.shape or bmode.shape != item.frame.rf.shape:
            with self._condition:
                self._refuse(
                    f"frame {item.frame.index}: strain {strain.shape} and B-mode {bmode.shape} do not cover the "
                    f"RF frame {item.frame.rf.shape}; use a processor without row cropping"
                )
            return
        for volume, voxels in ((self.strainVolume, strain), (self.bmodeVolume, bmode)):
            with slicer.util.NodeModify(volume):  # views update once, with voxels and geometry in place
                arrayToVolume(voxels, volume, item.frame.geometry)
        if self.recorder is not None:
            self.recorder.add(item.frame.index, self.strainVolume, self.bmodeVolume)
        self.lastQuality = item.result.quality
        setQualityAttributes(self.strainVolume, [item.result.quality.ncc_after], [item.result.quality.flagged])
        self.lastTimingsMs = {
            **item.result.timings_ms,
            "latency": 1000.0 * (time.perf_counter() - item.frame.arrivedAt),
        }
        with self._condition:
            self._count(framesShown=1)
