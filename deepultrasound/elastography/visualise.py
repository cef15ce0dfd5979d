"""B-mode images from RF, and PNG figures of strain over B-mode for people to read.

B-mode: the envelope is the magnitude of the analytic signal (Hilbert transform along the axial
axis, one RF line at a time, in float32 from a real FFT), log-compressed to decibels relative to
the brightest sample of each frame (0 dB) and clipped at ``-dynamic_range_db`` (default 60 dB), so a frame spans
``[-dynamic_range_db, 0]`` dB.

Figures are drawn with matplotlib's object API on an Agg canvas (no display, no global backend
change) and written atomically; axes are in mm from the image geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import fft

from deepultrasound.errors import InputError
from deepultrasound.io import atomic_write

DEFAULT_DYNAMIC_RANGE_DB = 60.0
"""Displayed B-mode range below each frame's maximum, dB."""


def envelope(rf: np.ndarray) -> np.ndarray:
    """Magnitude of the analytic signal of ``rf`` ``(..., H, W)`` along H, float32 (as ``scipy.signal.hilbert``).

    The analytic signal's spectrum is the real signal's with the positive frequencies doubled and
    the negative ones zeroed: one real FFT, the doubling, and an inverse FFT zero-padded to H.
    """
    height = rf.shape[-2]
    spectrum = fft.rfft(np.asarray(rf, dtype=np.float32), axis=-2)
    spectrum[..., 1 : (height + 1) // 2, :] *= 2  # DC and, for even H, the Nyquist bin stay as they are
    return np.abs(fft.ifft(spectrum, n=height, axis=-2))


def bmode_db(rf: np.ndarray, dynamic_range_db: float = DEFAULT_DYNAMIC_RANGE_DB) -> np.ndarray:
    """Log-compressed envelope of RF data.

    Args:
        rf: ``(..., H, W)`` RF, H axial samples, W lines (any leading axes, e.g. frames).
        dynamic_range_db: values below ``-dynamic_range_db`` are clipped to it.

    Returns:
        ``(..., H, W)`` float32 B-mode in dB, 0 at each frame's brightest sample, in
        ``[-dynamic_range_db, 0]``. A frame without echo is all ``-dynamic_range_db``.
    """
    if not np.isfinite(dynamic_range_db) or dynamic_range_db <= 0:
        raise InputError(f"dynamic_range_db must be a positive number of dB, got {dynamic_range_db}")
    array = np.asarray(rf, dtype=np.float32)
    if array.ndim < 2:
        raise InputError(f"RF must be (..., H, W), got shape {array.shape}")
    magnitude = envelope(array)
    peak = magnitude.max(axis=(-2, -1), keepdims=True)
    tiny = np.finfo(np.float32).tiny
    decibels = 20.0 * np.log10(np.maximum(magnitude, tiny) / np.maximum(peak, tiny))
    decibels[np.broadcast_to(peak == 0, decibels.shape)] = -dynamic_range_db
    return np.clip(decibels, -dynamic_range_db, 0.0).astype(np.float32)


def strain_display_range(strain: np.ndarray, rows: slice = slice(None)) -> tuple[float, float]:
    """Colour range (2nd, 98th percentile) of ``strain`` ``(H, W)`` over ``rows``, widened to >= 0.01 %."""
    values = strain[rows]
    low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 0.0)
    if high - low < 0.01:
        middle = 0.5 * (low + high)
        low, high = middle - 0.005, middle + 0.005
    return float(low), float(high)


def save_strain_figure(
    path: str | os.PathLike[str],
    strain: np.ndarray,
    bmode: np.ndarray,
    spacing_mm: tuple[float, float],
    origin_mm: tuple[float, float] = (0.0, 0.0),
    title: str = "",
    strain_range: tuple[float, float] | None = None,
    valid_rows: slice = slice(None),
) -> Path:
    """Write a PNG: the B-mode, and the axial strain over it, side by side with colour bars.

    Args:
        path: PNG file to write (atomically).
        strain: ``(H, W)`` axial strain in %.
        bmode: ``(H, W)`` B-mode in dB (see :func:`bmode_db`) of the pair's fixed frame.
        spacing_mm: ``(lateral, axial)`` pixel size in mm.
        origin_mm: ``(lateral, axial)`` position of pixel (0, 0) in mm.
        title: figure title.
        strain_range: colour range of the strain in %; default :func:`strain_display_range`
            over ``valid_rows``.
        valid_rows: rows where the strain window is complete; the rows outside are hatched over.

    Returns:
        The written path.
    """
    if strain.ndim != 2 or strain.shape != bmode.shape:
        raise InputError(f"strain {strain.shape} and B-mode {bmode.shape} must be the same (H, W) shape")
    height, width = strain.shape
    lateral, axial = spacing_mm
    # pixel edges in mm: lateral from left to right, depth increasing downwards
    extent = (
        origin_mm[0] - lateral / 2,
        origin_mm[0] + (width - 0.5) * lateral,
        origin_mm[1] + (height - 0.5) * axial,
        origin_mm[1] - axial / 2,
    )
    low, high = strain_range or strain_display_range(strain, valid_rows)
    aspect_ratio = (extent[2] - extent[3]) / (extent[1] - extent[0])
    panel_width = 3.2
    figure = Figure(
        figsize=(2 * panel_width + 2.0, min(max(panel_width * aspect_ratio, 2.5), 9.0) + 1.0),
        dpi=120,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)

    shown = left.imshow(bmode, cmap="gray", extent=extent, aspect="equal", interpolation="antialiased")
    left.set_title("B-mode")
    figure.colorbar(shown, ax=left, label="B-mode (dB)", fraction=0.05, pad=0.02)

    right.imshow(bmode, cmap="gray", extent=extent, aspect="equal", interpolation="antialiased")
    overlay = right.imshow(
        strain,
        cmap="viridis",
        vmin=low,
        vmax=high,
        alpha=0.75,
        extent=extent,
        aspect="equal",
        interpolation="antialiased",
    )
    start, stop, _ = valid_rows.indices(height)
    for first, last in ((0, start), (stop, height)):
        if last > first:
            right.axhspan(
                origin_mm[1] + (first - 0.5) * axial,
                origin_mm[1] + (last - 0.5) * axial,
                facecolor="none",
                edgecolor="white",
                hatch="//",
                linewidth=0,
                alpha=0.6,
            )
    right.set_title("axial strain")
    figure.colorbar(overlay, ax=right, label="axial strain (%), compression < 0", fraction=0.05, pad=0.02)

    for axes in (left, right):
        axes.set_xlabel("lateral (mm)")
        axes.set_ylabel("depth (mm)")
    if title:
        figure.suptitle(title, fontsize=10)
    target = Path(path)
    with atomic_write(target) as staged:
        figure.savefig(staged, format="png", bbox_inches="tight")
    return target
