"""The strain plot of a tracked sequence, for people to read (matplotlib object API on Agg, written atomically).

Top: endocardial and mid-wall GLS and radial strain (%) over time; middle: the LV volume (area-length)
and cavity area; bottom (when the frames' quality is given): each frame's similarity with the flag
threshold. End-diastole and end-systole are marked on all; frames flagged by the quality figure are
shaded; the EF and the figures at end-systole stand beside the curves.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepultrasound.io import atomic_write
from deepultrasound.registration.quality import MIN_SIMILARITY, FrameQuality
from deepultrasound.registration.strain import StrainCurves


def save_strain_plot(
    path: str | os.PathLike[str],
    curves: StrainCurves,
    times: np.ndarray,
    time_label: str = "time (s)",
    title: str = "",
    quality: FrameQuality | None = None,
) -> Path:
    """Write the PNG of ``curves`` (and ``quality``) over ``times`` ``(T,)`` (described by ``time_label``)."""
    figure = Figure(figsize=(9.0, 8.0 if quality is not None else 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    rows = figure.subplots(
        3 if quality is not None else 2, 1, sharex=True, height_ratios=(3, 2, 1.2)[: 2 + (quality is not None)]
    )
    top, bottom = rows[0], rows[1]
    top.plot(times, curves.gls_endo, "-o", markersize=3, label="GLS endocardial")
    top.plot(times, curves.gls_mid, "-s", markersize=3, label="GLS mid-wall")
    top.plot(times, curves.radial, "-^", markersize=3, label="radial (wall thickness)")
    top.axhline(0.0, color="0.6", linewidth=0.8)
    top.set_ylabel("strain from end-diastole (%)")
    top.legend(loc="upper left", fontsize=8)
    volume_unit = "ml" if curves.units == "mm" else f"10$^3$ {curves.units}$^3$"
    bottom.plot(times, curves.lv_volume, "-o", color="tab:red", markersize=3, label=f"LV volume ({volume_unit})")
    bottom.set_ylabel(f"LV volume ({volume_unit})")
    area = bottom.twinx()
    area.plot(times, curves.lv_area, "--", color="tab:gray", label=f"LV area ({curves.units}$^2$)")
    area.set_ylabel(f"LV cavity area ({curves.units}$^2$)")
    if quality is not None:
        _plot_quality(rows[2], quality, times)
    rows[-1].set_xlabel(time_label)
    for axes in rows:
        for index in (curves.ed, curves.es):
            axes.axvline(times[index], color="k", linestyle=":", linewidth=1.0)
        axes.grid(alpha=0.3)
    for index, name in ((curves.ed, "ED"), (curves.es, "ES")):
        top.annotate(name, (times[index], 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom")
    figure.text(
        1.0,
        0.5,
        f"EF {curves.ejection_fraction:.1f} %\n(area-length)\n\n"
        f"at ES:\nGLS endo {curves.gls_endo[curves.es]:.1f} %\nGLS mid {curves.gls_mid[curves.es]:.1f} %\n"
        f"radial {curves.radial[curves.es]:.1f} %",
        ha="left",
        va="center",
        fontsize=10,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
    )
    if title:
        figure.suptitle(title)
    path = Path(path)
    with atomic_write(path) as staged:
        figure.savefig(staged, format="png", dpi=100, bbox_inches="tight")
    return path


def _plot_quality(axes: object, quality: FrameQuality, times: np.ndarray) -> None:
    """Similarity per frame with the flag threshold; flagged frames shaded here and on the other panels."""
    axes.plot(times, quality.similarity, "-o", color="tab:purple", markersize=3, label="similarity")
    axes.axhline(MIN_SIMILARITY, color="tab:red", linestyle="--", linewidth=0.8, label="flag below")
    axes.set_ylabel("similarity")
    axes.set_ylim(min(0.0, float(np.nanmin(quality.similarity, initial=0.0))), 1.05)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    for index in quality.flagged_frames:
        for panel in axes.figure.axes:
            panel.axvspan(times[index] - step / 2, times[index] + step / 2, color="tab:red", alpha=0.15, linewidth=0)
    if quality.flagged_frames:
        axes.set_title("shaded: flagged frames (do not trust)", fontsize=9, color="tab:red", loc="left")
    axes.legend(loc="lower left", fontsize=8)
