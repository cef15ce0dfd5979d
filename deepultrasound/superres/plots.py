"""The benchmark's picture of super-resolution, for people to read: per image, the low-resolution input, each
method's estimate and the full-resolution truth, side by side on the fine grid.

Matplotlib object API on Agg; the PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepultrasound.io import atomic_write


def save_comparison(
    path: str | os.PathLike[str],
    rows: Mapping[str, Mapping[str, np.ndarray]],
    psnr: Mapping[str, Mapping[str, float]],
) -> Path:
    """Write a PNG with one row per image and one column per panel; returns the path.

    Args:
        rows: image name -> panel title -> ``(H, W)`` B-mode in [0, 1] on the fine grid (every row the same
            titles in the same order: the input, the methods' estimates, the truth).
        psnr: image name -> panel title -> PSNR (dB) shown under the title; panels without one show none.
    """
    titles = list(next(iter(rows.values())))
    figure = Figure(figsize=(2.2 * len(titles), 2.4 * len(rows) + 0.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.asarray(figure.subplots(len(rows), len(titles), squeeze=False))
    for row, (name, panels) in enumerate(rows.items()):
        for column, title in enumerate(titles):
            axis = axes[row, column]
            axis.imshow(panels[title], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            value = psnr.get(name, {}).get(title)
            axis.set_title(f"{name}: {title}" + (f"\n{value:.1f} dB" if value is not None else ""), fontsize=8)
            axis.set_axis_off()
    path = Path(path)
    with atomic_write(path) as staged:
        figure.savefig(staged, format="png", dpi=100)
    return path
