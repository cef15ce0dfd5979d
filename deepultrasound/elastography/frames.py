"""RF frame preparation for strain estimation: checks, per-frame normalisation, frame pairs, row crops.

The RF sequence is ``(N, H, W)``: frames, axial samples, lines. :func:`prepare_rf` checks it and
converts it to float32; :func:`normalise_frame` scales each frame as a bundle's manifest
``normalisation`` says (:data:`NORMALISATIONS`); :func:`pair_indices` lists the (fixed, moving)
pairs of a reference mode; :func:`parse_crop` and :func:`crop_rows` keep an axial band.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.io import Image

Reference = Literal["first", "previous"]
REFERENCES: tuple[str, ...] = ("first", "previous")

FRAME_TO_FRAME = "previous"
"""Manifest value (``inference.pairs``) of models trained on frame-to-frame pairs (k-1, k):
their (reference, k) displacement is composed from frame-to-frame ones (:class:`DisplacementChain`)."""
PAPER_CROP = slice(100, -300)
"""Rows the DeepUSE paper keeps of its 2000-sample in vivo frames (1600 x 128 network input)."""


def _frame_max(frame: np.ndarray) -> float:
    """Largest value; frames with no positive sample fall back to the largest magnitude."""
    peak = float(frame.max())
    return peak if peak > 0 else float(np.abs(frame).max())


#: normalisation kind (manifest ``normalisation["kind"]``) -> the per-frame divisor
NORMALISATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "frame_max": _frame_max,  # the DeepUSE in vivo database: each frame stored with max = 1.0
    "frame_max_abs": lambda frame: float(np.abs(frame).max()),  # deepultrasound.simulation: max |rf| = 1
    "none": lambda frame: 1.0,
}

DEEPUSE_NORMALISATION = {
    "kind": "frame_max",
    "description": "each RF frame divided by its maximum, as the DeepUSE in vivo frames are stored (max 1.0)",
}
"""The ``normalisation`` manifest entry of models trained like the original DeepUSE."""


def normalise_frame(frame: np.ndarray, kind: str) -> np.ndarray:
    """``frame`` (H, W) scaled per :data:`NORMALISATIONS` ``[kind]``; a zero frame is returned unchanged."""
    if kind not in NORMALISATIONS:
        raise InputError(f"unknown normalisation {kind!r}; known: {', '.join(NORMALISATIONS)}")
    scale = NORMALISATIONS[kind](frame)
    return frame / np.float32(scale) if scale > 0 else frame


def prepare_rf(rf: np.ndarray) -> np.ndarray:
    """Check an RF sequence and return it as contiguous float32 ``(N, H, W)``.

    Raises:
        InputError: not 3-D, fewer than 2 frames, empty frames, complex or non-numeric data, or
            NaN/Inf (the message names the first bad frame).
    """
    array = np.asarray(rf)
    if array.ndim != 3:
        raise InputError(
            f"an RF sequence must be (frames, axial samples, lines), got shape {array.shape}; "
            "a single 2D frame has nothing to compare with"
        )
    if array.shape[0] < 2:
        raise InputError(f"strain needs at least 2 frames, got {array.shape[0]}")
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise InputError(f"RF frames are empty: shape {array.shape}")
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"RF data must be real numbers, got dtype {array.dtype}")
    frames = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(frames).reshape(len(frames), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        count = int((~np.isfinite(frames[bad[0]])).sum())
        raise InputError(
            f"RF frame {bad[0]} holds {count} NaN or infinite value(s)"
            + (f" (frames with such values: {bad.tolist()})" if len(bad) > 1 else "")
            + "; remove or repair the frame"
        )
    return frames


def pair_indices(frames: int, reference: Reference) -> np.ndarray:
    """``(frames - 1, 2)`` (fixed, moving) indices: (0, k) for ``"first"``, (k-1, k) for ``"previous"``."""
    if reference not in REFERENCES:
        raise InputError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    moving = np.arange(1, frames)
    fixed = np.zeros_like(moving) if reference == "first" else moving - 1
    return np.stack([fixed, moving], axis=1)


def parse_crop(text: str) -> slice:
    """``"START:STOP"`` (Python slice syntax, either end optional, e.g. ``"100:-300"``) -> a row slice."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        return slice(*(int(part) if part.strip() else None for part in parts))
    except ValueError as error:
        raise InputError(f"--crop must be START:STOP rows, e.g. 100:-300, got {text!r}") from error


def crop_rows(image: Image, rows: slice) -> Image:
    """Keep the axial rows ``rows`` of a ``(frames, rows, cols)`` sequence; the origin moves to the first kept row.

    Raises:
        InputError: the slice keeps no row or has a step.
    """
    if rows.step not in (None, 1):
        raise InputError(f"a row crop cannot have a step, got {rows}")
    height = image.array.shape[-2]
    start, stop, _ = rows.indices(height)
    if stop - start < 1:
        raise InputError(
            f"crop {rows.start}:{rows.stop} keeps no row of frames with {height} rows; "
            "choose START:STOP inside the frame"
        )
    direction = np.asarray(image.direction).reshape(image.ndim, image.ndim)
    step = np.zeros(image.ndim)
    step[1] = start * image.axial_spacing_mm  # axis 1 of the geometry (y) is the axial, row axis
    origin = tuple(float(v) for v in np.asarray(image.origin) + direction @ step)
    return dataclasses.replace(image, array=image.array[..., start:stop, :], origin=origin)
