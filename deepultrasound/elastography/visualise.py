"""PNG figures of strain over B-mode for people to read.

B-mode comes from :func:`deepultrasound.spatial.bmode_db`. Figures are drawn with matplotlib's
object API on an Agg canvas (no display, no global backend change) and written atomically; axes
are in mm from the image geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepultrasound.errors import InputError
from deepultrasound.io import atomic_write


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
        bmode: ``(H, W)`` B-mode in dB (:func:`deepultrasound.spatial.bmode_db`) of the pair's fixed frame.
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
