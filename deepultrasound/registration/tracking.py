"""Propagating the labels of one frame through a sequence, with the displacements and strain over time.

For every frame t the result holds ``w_t``: the displacement on frame t's grid onto the labelled
(reference) frame r, ``frame_r(p + w_t(p)) ~ frame_t(p)``; the labels of frame t are the
reference labels warped by it (nearest label of the warped soft one-hot), never warped labels
warped again.

Each frame is registered to the reference itself, then corrected against it:

1. direct: ``d``, the registration of frame t (fixed) and the reference (moving);
2. correction: the reference warped by ``d`` should look like frame t; the residual ``e``,
   registration of frame t and that warped reference, is composed in:
   ``w_t = e o d``, i.e. ``w_t(p) = e(p) + d(p + e(p))``
   (:func:`~deepultrasound.spatial.compose_displacements`).

So no frame's error passes to the next one. Chaining frame-to-frame fields instead (``d_t o w_{t-1}``,
then the same correction) lets each step's small under-estimate of the motion add up, which shows
in the end-systolic GLS of the cines `deepultrasound bench register` tracks. The motion between any
frame of a cycle and its labelled frame is within what the networks are trained on (end-diastole to
end-systole pairs and pairs at random phases).

Each frame costs two registrations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from deepultrasound.errors import InputError
from deepultrasound.registration.baselines import PairMethod
from deepultrasound.registration.images import warp_frame, warp_label_array
from deepultrasound.registration.quality import FrameQuality, frame_quality
from deepultrasound.registration.strain import StrainCurves, strain_curves
from deepultrasound.spatial import compose_displacements


@dataclass(frozen=True)
class TrackResult:
    """The tracked sequence.

    Attributes:
        labels: ``(T, H, W)`` uint8 label maps (the reference frame's as given).
        displacements: ``(T, 2, H, W)`` float32 pixels, frame t onto the reference (zero at the reference).
        curves: strain and LV figures over the frames (:func:`~deepultrasound.registration.strain.strain_curves`).
        quality: how far each frame can be trusted (:func:`~deepultrasound.registration.quality.frame_quality`).
        reference: index of the labelled frame.
    """

    labels: np.ndarray
    displacements: np.ndarray
    curves: StrainCurves
    quality: FrameQuality
    reference: int


def _compose(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """``inner(p) + outer(p + inner(p))`` of two ``(2, H, W)`` fields."""
    return compose_displacements(torch.from_numpy(inner)[None], torch.from_numpy(outer)[None])[0].numpy()


def track_displacements(
    frames: np.ndarray, reference: int, method: PairMethod, step: Callable[[], object] | None = None
) -> np.ndarray:
    """``(T, 2, H, W)`` float32 pixels: each frame's displacement onto frame ``reference`` (see the module docstring).

    Args:
        frames: ``(T, H, W)`` grey frames, T >= 2.
        reference: the labelled frame, ``0 <= reference < T``.
        method: the pair registration.
        step: called once per frame done (progress).
    """
    count = len(frames)
    if not 0 <= reference < count:
        raise InputError(f"the labelled frame {reference} is outside the sequence's frames 0..{count - 1}")
    fields = np.zeros((count, 2, *frames.shape[1:]), np.float32)
    for t in range(count):
        if t == reference:
            continue
        direct = method(frames[t], frames[reference])
        residual = method(frames[t], warp_frame(frames[reference], direct))
        fields[t] = _compose(residual, direct)
        if step is not None:
            step()
    return fields


def track_sequence(
    frames: np.ndarray,
    reference_labels: np.ndarray,
    reference: int,
    method: PairMethod,
    spacing: tuple[float, float],
    units: str = "mm",
    progress: bool = False,
) -> TrackResult:
    """Track ``reference_labels`` of frame ``reference`` through ``frames`` ``(T, H, W)`` and measure strain.

    Args:
        reference_labels: ``(H, W)`` CAMUS labels of frame ``reference``.
        method: the pair registration.
        spacing: ``(lateral, axial)`` size of a pixel, in ``units``.
        progress: show a progress bar over frames.
    """
    if frames.ndim != 3 or len(frames) < 2:
        raise InputError(f"tracking needs a sequence of at least 2 frames (T, H, W), got shape {frames.shape}")
    if reference_labels.shape != frames.shape[1:]:
        raise InputError(f"labels {reference_labels.shape} and frames {frames.shape[1:]} differ in size")
    with tqdm(total=len(frames) - 1, desc="tracking", unit="frame", disable=not progress, leave=False) as bar:
        fields = track_displacements(frames, reference, method, bar.update)
    labels = np.stack([warp_label_array(reference_labels, field) for field in fields])
    labels[reference] = reference_labels
    curves = strain_curves(reference_labels, fields, labels, spacing, units)
    quality = frame_quality(frames, labels, fields, reference)
    return TrackResult(labels=labels, displacements=fields, curves=curves, quality=quality, reference=reference)
