"""The benchmark's picture of synthesis, for people to read: label maps, real images and each model's images.

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


def save_synthesis_grid(
    path: str | os.PathLike[str], labels: np.ndarray, real: np.ndarray, synthetic: Mapping[str, np.ndarray]
) -> Path:
    """Write a PNG with one row per label map: the map, the real image, then each model's image; returns the path.

    Args:
        labels: ``(N, H, W)`` integer label maps.
        real: ``(N, H, W)`` B-mode in [0, 1] of those maps.
        synthetic: model name -> ``(N, H, W)`` B-mode in [0, 1] synthesised from ``labels``.
    """
    columns = {"label map": None, "real": real, **synthetic}
    rows = len(labels)
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * rows + 0.3), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.asarray(figure.subplots(rows, len(columns), squeeze=False))
    for column, (title, images) in enumerate(columns.items()):
        axes[0, column].set_title(title, fontsize=8)
        for row in range(rows):
            axis = axes[row, column]
            if images is None:
                axis.imshow(labels[row], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            else:
                axis.imshow(images[row], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_axis_off()
    path = Path(path)
    with atomic_write(path) as staged:
        figure.savefig(staged, format="png", dpi=100)
    return path
