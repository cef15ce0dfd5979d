"""Frame-by-frame strain for a live RF stream: one call per incoming frame, in order.

:class:`LiveStrainProcessor` holds the expensive set-up (model session or block matching) once
and turns each RF frame into a :class:`FrameResult`: displacement and axial strain of the pair
(reference frame, current frame), and the B-mode of the current frame. It is what the
``deepultrasound stream`` pipeline and the DeepUSE Slicer module both run::

    processor = LiveStrainProcessor("reusenet", backend="onnxruntime", reference_every=10)
    for frame in frames:                              # (H, W) RF, any real dtype
        result = processor.process(frame, axial_spacing_mm=0.02)
        if result is not None:
            show(result.strain, result.bmode_db)      # (H, W) float32, % and dB

Reference frames. As ReUSENet is used, every frame is compared with one reference frame and
the recurrent state is carried from pair to pair. A frame becomes the new reference (its call
returns ``None``: nothing to compare it with yet; the recurrent state and the block-matching
search prior start again) when it is

- the first frame, or the first after :meth:`LiveStrainProcessor.reset`;
- ``reference_every`` frames after the current reference (frames ``r+1 .. r+K-1`` are compared
  with reference ``r``; frame ``r+K`` is the next reference);
- less similar to the reference than ``reference_min_ncc`` (zero-normalised cross-correlation of
  the raw frames, in [-1, 1]): too much motion for the pair to be tracked;
- of another size than the reference (the probe or depth setting changed): a size change is a
  reset, not an error.

The first result after a new reference has ``reference_reset=True``. Every result carries its
quality figure (:class:`~deepultrasound.elastography.metrics.StrainQuality`: NCC of the
reference and the frame before and after warping by the estimate; ``flagged`` when the estimate
does not explain the pair).

Frames that cannot be used raise :class:`InputError` and leave the state untouched, so the
caller may skip them and go on: not 2-D, empty, complex or non-numeric, NaN/Inf, or constant
(no speckle to track, e.g. a blank frame from a scanner).

Thread ownership: one processor belongs to one thread at a time (the caller's); it holds the
reference frame, recurrent state and counters.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepultrasound.elastography.baselines import BlockMatchingEstimator
from deepultrasound.elastography.estimators import SequenceStrainEstimator, StrainEstimator
from deepultrasound.elastography.frames import normalise_frame
from deepultrasound.elastography.metrics import StrainQuality, ncc, strain_quality
from deepultrasound.elastography.model_resolution import resolve_model
from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM, axial_strain, window_samples
from deepultrasound.errors import BundleError, InputError
from deepultrasound.spatial import bmode_db

logger = logging.getLogger(__name__)

LIVE_MODEL = "usenet-fast-deepuse"
"""The bundled model live processing takes when none is named: the real-time USENet (rows folded 4
into channels, see :class:`~deepultrasound.elastography.networks.USENet`)."""

TIMING_STAGES = ("normalise", "network", "strain", "bmode")
"""Keys of :attr:`FrameResult.timings_ms`, in the order the stages run."""


@dataclass(frozen=True)
class FrameResult:
    """Strain of one live frame against its reference frame.

    Shapes are those of the processed frame, ``(H, W)`` = (axial samples, lines) after the
    processor's ``crop`` (rows ``LiveStrainProcessor.kept_rows(height)`` of the incoming frame).

    Attributes:
        strain: ``(H, W)`` float32 least-squares axial strain in %, negative in compression.
        bmode_db: ``(H, W)`` float32 B-mode of the current frame in dB, ``[-60, 0]``.
        displacement: ``(2, H, W)`` float32 in pixels, channel 0 lateral, channel 1 axial, with
            ``current(p + u(p)) ~ reference(p)``.
        reference_index: index of the reference frame (frames counted from 0 since creation or
            :meth:`LiveStrainProcessor.reset`; frames that raised are not counted).
        frame_index: index of the current frame, same count.
        reference_reset: True for the first pair of a new reference (state started from zeros).
        quality: how well the displacement explains the pair; ``quality.flagged``: do not trust the strain.
        timings_ms: wall time of each stage in ms, keys :data:`TIMING_STAGES`.
    """

    strain: np.ndarray
    bmode_db: np.ndarray
    displacement: np.ndarray
    reference_index: int
    frame_index: int
    reference_reset: bool
    quality: StrainQuality
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class PendingPair:
    """A frame whose displacement is known, before strain and B-mode (see :meth:`LiveStrainProcessor.finish`)."""

    frame: np.ndarray  # (H, W) float32, cropped
    reference: np.ndarray  # (H, W) float32, the reference frame, cropped
    displacement: torch.Tensor  # (2, H, W) float32 in pixels, on the estimator's device
    axial_spacing_mm: float
    reference_index: int
    frame_index: int
    reference_reset: bool
    timings_ms: dict[str, float]
    ncc_before: float | None = None  # NCC of frame and reference when the reference policy measured it


def resolve_live_model(model: str | os.PathLike[str] | None = None) -> Path:
    """The bundle folder of ``model`` (see :func:`resolve_model`); with None, :data:`LIVE_MODEL`
    when it is installed, else the preferred bundled DeepUSE model.

    Raises:
        BundleError: nothing matches; the message lists the bundled models and how to get one.
    """
    if model is None:
        try:
            return resolve_model(LIVE_MODEL)
        except BundleError:
            pass
    return resolve_model(model)


def check_frame(frame: np.ndarray) -> np.ndarray:
    """``frame`` as contiguous float32 ``(H, W)``.

    Raises:
        InputError: not 2-D, empty, complex or non-numeric, NaN/Inf, or constant.
    """
    array = np.asarray(frame)
    if array.ndim != 2:
        raise InputError(f"a live RF frame must be 2-D (axial samples, lines), got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"RF frame is empty: shape {array.shape}")
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"RF data must be real numbers, got dtype {array.dtype}")
    values = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(values).all():
        count = int((~np.isfinite(values)).sum())
        raise InputError(f"RF frame holds {count} NaN or infinite value(s); frame skipped")
    if values.max() == values.min():
        raise InputError("RF frame is constant (no speckle to track); frame skipped")
    return values


class LiveStrainProcessor:
    """Axial strain of each incoming RF frame against a reference frame (see the module docstring).

    Args:
        model: DeepUSE bundle folder or bundled model name; None takes :data:`LIVE_MODEL`
            (:func:`resolve_live_model`).
            Ignored with ``baseline=True``.
        backend: "auto" (ONNX Runtime on the CPU when the bundle has a graph), "torch",
            "torchscript" or "onnxruntime".
        device: "auto", "cpu", "cuda", "cuda:N", "mps"; None is automatic.
        threads: intra-op CPU threads, None for the library default.
        half: run the network in float16 (torch backend, for GPUs); see :class:`StrainEstimator`.
        cuda_graphs: replay the pairs of each reference as CUDA graphs; None: wherever possible
            (see :class:`StrainEstimator`).
        refine: refine each frame's displacement against the reference (a second network pass
            per frame, see :class:`StrainEstimator`); off by default, for the frame rate.
        baseline: NCC block matching instead of a network (no model needed).
        reference_every: a new reference frame (and state reset) every K >= 2 frames; None: never.
        reference_min_ncc: also a new reference when NCC(reference, frame) drops below this
            value in (-1, 1]; None: never.
        window_mm: least-squares strain window in mm (5.74 mm = 287 samples at 0.02 mm).
        crop: axial rows kept of every frame (e.g. ``slice(100, -300)`` as in the DeepUSE paper);
            None keeps all rows.

    Raises:
        BundleError: no such model, or not a strain model (the message says how to get one).
        InputError: an invalid option value.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        device: str | torch.device | None = None,
        threads: int | None = None,
        half: bool = False,
        cuda_graphs: bool | None = None,
        refine: bool = False,
        baseline: bool = False,
        reference_every: int | None = 10,
        reference_min_ncc: float | None = None,
        window_mm: float = DEFAULT_WINDOW_MM,
        crop: slice | None = None,
    ) -> None:
        if reference_every is not None and (not isinstance(reference_every, int) or reference_every < 2):
            raise InputError(
                f"reference_every must be an integer >= 2 (frames per reference) or None, got {reference_every!r}"
            )
        if reference_min_ncc is not None and not -1.0 < reference_min_ncc <= 1.0:
            raise InputError(f"reference_min_ncc must lie in (-1, 1] or be None, got {reference_min_ncc!r}")
        if crop is not None and crop.step not in (None, 1):
            raise InputError(f"crop cannot have a step, got {crop}")
        window_samples(window_mm)  # validates the window
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        self.estimator: SequenceStrainEstimator
        if baseline:
            if threads is not None:
                torch.set_num_threads(threads)
            self.estimator = BlockMatchingEstimator(device=device)
        else:
            self.estimator = StrainEstimator(
                resolve_live_model(model),
                backend=backend,
                device=device,
                threads=threads,
                half=half,
                cuda_graphs=cuda_graphs,
                refine=refine,
            )
        self.reference_every = reference_every
        self.reference_min_ncc = reference_min_ncc
        self.window_mm = window_mm
        self.crop = crop or slice(None)
        self.reset()

    @property
    def name(self) -> str:
        """The estimator's name: the model name, or "block matching"."""
        return self.estimator.name

    def reset(self) -> None:
        """Forget the reference frame and the recurrent state; the next frame is a new reference
        and frame counting starts again at 0."""
        self._reference: np.ndarray | None = None  # raw float32 (H, W), for NCC and shape checks
        self._reference_normalised: torch.Tensor | None = None  # (H, W) on the estimator's device
        self._reference_index = -1
        self._next_index = 0
        self._fresh_reference = False
        self.estimator.reset()

    def kept_rows(self, height: int) -> slice:
        """The rows ``start:stop`` of an incoming frame of ``height`` rows that results cover.

        Raises:
            InputError: the crop keeps no row.
        """
        start, stop, _ = self.crop.indices(height)
        if stop - start < 1:
            raise InputError(f"crop {self.crop.start}:{self.crop.stop} keeps no row of frames with {height} rows")
        return slice(start, stop)

    def process(self, frame: np.ndarray, axial_spacing_mm: float) -> FrameResult | None:
        """Strain of ``frame`` against the reference frame.

        Args:
            frame: ``(H, W)`` RF frame (axial samples, lines), any real dtype; one call per
                incoming frame, in order.
            axial_spacing_mm: axial sample spacing in mm (converts the strain window to samples).

        Returns:
            :class:`FrameResult`, or None when ``frame`` became the new reference.

        Raises:
            InputError: an unusable frame (see :func:`check_frame`) or a strain window longer
                than the cropped frame; the processor's state is unchanged.
        """
        pending = self.displacement(frame, axial_spacing_mm)
        return None if pending is None else self.finish(pending)

    def displacement(self, frame: np.ndarray, axial_spacing_mm: float) -> PendingPair | None:
        """First half of :meth:`process`: checks, normalisation and network (or block matching).

        The frame is copied to the estimator's device once; the reference frame, the recurrent
        state and the chained displacement stay there. A pipeline may run :meth:`finish` of one
        frame in another thread while this runs on the next frame. Returns None when ``frame``
        became the new reference.
        """
        started = time.perf_counter()
        values = check_frame(frame)
        values = np.ascontiguousarray(values[self.kept_rows(values.shape[0])])
        samples = window_samples(self.window_mm, axial_spacing_mm)
        if samples > values.shape[0]:
            raise InputError(
                f"strain window of {self.window_mm} mm is {samples} samples at {axial_spacing_mm} mm, longer than "
                f"the {values.shape[0]} rows processed: use a shorter window or keep more rows"
            )
        index = self._next_index
        self._next_index += 1
        renew, similarity = self._needs_new_reference(values, index)
        if renew:
            self._set_reference(values, index)
            return None
        current = self._on_device(values)
        timings = {"normalise": _ms_since(started)}
        started = time.perf_counter()
        fresh, self._fresh_reference = self._fresh_reference, False
        with torch.inference_mode():
            pair = torch.stack([self._reference_normalised, current])[None]
            displacement = self.estimator.step_tensor(pair, new_reference=fresh)[0]
        _synchronise(displacement.device)  # the stage's time is the device's work, not its launch
        timings["network"] = _ms_since(started)
        return PendingPair(
            values,
            self._reference,
            displacement,
            axial_spacing_mm,
            self._reference_index,
            index,
            fresh,
            timings,
            similarity,
        )

    def finish(self, pending: PendingPair) -> FrameResult:
        """Second half of :meth:`process`: strain and B-mode of a :meth:`displacement` result.

        Holds no processor state, so it may run in another thread than :meth:`displacement`.
        """
        timings = dict(pending.timings_ms)
        started = time.perf_counter()
        with torch.inference_mode():
            strain = axial_strain(pending.displacement[None], self.window_mm, pending.axial_spacing_mm)[0, 0]
            strain, displacement = strain.cpu().numpy(), pending.displacement.cpu().numpy()
        quality = strain_quality(pending.reference, pending.frame, displacement, ncc_before=pending.ncc_before)
        timings["strain"] = _ms_since(started)  # with the quality figure
        started = time.perf_counter()
        bmode = bmode_db(pending.frame)
        timings["bmode"] = _ms_since(started)
        return FrameResult(
            strain=strain,
            bmode_db=bmode,
            displacement=displacement,
            reference_index=pending.reference_index,
            frame_index=pending.frame_index,
            reference_reset=pending.reference_reset,
            quality=quality,
            timings_ms=timings,
        )

    def _needs_new_reference(self, values: np.ndarray, index: int) -> tuple[bool, float | None]:
        """Whether ``values`` becomes the reference frame, and its NCC with the current reference when
        the correlation policy measured it (the quality figure reuses it)."""
        reference = self._reference
        if reference is None:
            return True, None
        if reference.shape != values.shape:
            logger.info("frame size changed from %s to %s: new reference frame", reference.shape, values.shape)
            return True, None
        if self.reference_every is not None and index - self._reference_index >= self.reference_every:
            return True, None
        if self.reference_min_ncc is None:
            return False, None
        similarity = ncc(reference, values)
        if similarity < self.reference_min_ncc:
            logger.debug("NCC %.3f with the reference < %.3f: new reference frame", similarity, self.reference_min_ncc)
            return True, similarity
        return False, similarity

    def _set_reference(self, values: np.ndarray, index: int) -> None:
        self._reference = values
        self._reference_normalised = self._on_device(values)
        self._reference_index = index
        self._fresh_reference = True
        self.estimator.reset()

    def _on_device(self, values: np.ndarray) -> torch.Tensor:
        """A checked ``(H, W)`` frame normalised per the estimator, on its device."""
        normalised = normalise_frame(values, self.estimator.normalisation)
        return torch.from_numpy(normalised).to(self.estimator.device)


def _synchronise(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms_since(started: float) -> float:
    return 1000.0 * (time.perf_counter() - started)
