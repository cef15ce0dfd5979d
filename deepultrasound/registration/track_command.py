"""``deepultrasound track SEQUENCE --labels FRAME_LABELS [--frame I] -o OUTDIR``: labels and strain over a sequence.

SEQUENCE: a 2D+t image (frames along the third axis: CAMUS ``_sequence``/``_half_sequence``
``.mhd``/``.nii.gz``, any ``.mha``/``.nrrd``/``.nii``) or a video (``.avi .mp4 .mov .mkv``; videos
carry no pixel size, so lengths are in pixels); colour frames are converted to grey by luma (said
on stderr); at least 2 frames of at least 32 x 32 pixels. FRAME_LABELS: the CAMUS label map (0-3) of
frame I (0-based, default 0), of the frames' size. The labels are propagated by
:func:`~deepultrasound.registration.tracking.track_sequence` (each frame registered to the
labelled frame, then corrected against it).

OUTDIR receives, each file written atomically once everything is computed:

- ``labels.mha``: ``(T, H, W)`` uint8 label sequence on the sequence's geometry;
- ``displacement.mha``: ``(T, H, W)`` vectors (2 components, float32, mm; pixels for videos):
  frame t's point ``x`` lies at ``x + d(x)`` in the labelled frame;
- ``strain.csv``: per frame ``frame, time_s, phase`` (ED, ES, or ED+ES when the LV area does not
  change), LV cavity area, area-length volume,
  endocardial and mid-wall GLS and radial strain in % from end-diastole, and the frame's quality:
  similarity, folding % and ``flagged`` (1: do not trust this frame;
  :mod:`~deepultrasound.registration.quality`);
- ``strain.png``: the curves with ED and ES marked, the EF beside them and the flagged frames shaded;
- ``summary.json``: method, labelled frame, ED/ES frames, EF and the strain figures at ES, units, and the
  flagged frames with the thresholds that flagged them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.io import Image, atomic_write, read_image, read_video, write_image
from deepultrasound.registration.images import check_frames, check_labels, displacement_in_mm
from deepultrasound.registration.inference import pair_method
from deepultrasound.registration.plots import save_strain_plot
from deepultrasound.registration.quality import MAX_FOLDING_PERCENT, MIN_SIMILARITY
from deepultrasound.registration.register_command import add_method_options
from deepultrasound.registration.tracking import TrackResult, track_sequence

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv")
OUTPUT_FILES = ("labels.mha", "displacement.mha", "strain.csv", "strain.png", "summary.json")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound track``."""
    parser.add_argument("sequence", type=Path, help="2D+t image (.mha .mhd .nrrd .nii .nii.gz) or video (.avi .mp4)")
    parser.add_argument("--labels", type=Path, required=True, help="CAMUS label map (0-3) of the labelled frame")
    parser.add_argument("--frame", type=int, default=0, help="index of the labelled frame, from 0 (default: 0)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    add_method_options(parser)


def read_frames(path: Path) -> tuple[Image, str]:
    """The sequence as a checked grey ``(T, H, W)`` image (T >= 2) and the unit of its pixel size ("mm" or "px")."""
    if path.name.lower().endswith(VIDEO_SUFFIXES):
        image, units = read_video(path, grayscale=False), "px"
        logger.warning("%s: a video has no pixel size; lengths and areas are in pixels", path)
    else:
        image, units = read_image(path), "mm"
    if image.ndim == 2 or image.array.shape[0] < 2:
        frames = 1 if image.ndim == 2 else image.array.shape[0]
        raise InputError(f"{path} holds {frames} frame; tracking needs a sequence of at least 2 frames")
    return check_frames(image, "sequence"), units


def write_csv(path: Path, result: TrackResult, times: np.ndarray) -> None:
    """One row per frame (see the module docstring); atomic."""
    curves, quality = result.curves, result.quality
    area, volume = ("mm2", "ml") if curves.units == "mm" else (f"{curves.units}2", f"k{curves.units}3")
    with atomic_write(path) as staged, staged.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "frame",
                "time_s",
                "phase",
                f"lv_area_{area}",
                f"lv_volume_{volume}",
                "gls_endo_percent",
                "gls_mid_percent",
                "radial_percent",
                "similarity",
                "folding_percent",
                "flagged",
            ]
        )
        for t, moment in enumerate(times):
            phase = "+".join(name for name, index in (("ED", curves.ed), ("ES", curves.es)) if index == t)
            values = (
                curves.lv_area[t],
                curves.lv_volume[t],
                curves.gls_endo[t],
                curves.gls_mid[t],
                curves.radial[t],
                quality.similarity[t],
                quality.folding_percent[t],
            )
            flagged = int(quality.flagged[t])
            writer.writerow([t, f"{moment:.4f}", phase, *(f"{value:.4f}" for value in values), flagged])


def _figure(value: float) -> float | None:
    """``value`` rounded for ``summary.json``; None where it is not a number (JSON has no NaN)."""
    return round(float(value), 3) if math.isfinite(value) else None


def _flag_text(result: TrackResult) -> str:
    """``"no frame flagged"`` or which frames are flagged and why they may be wrong."""
    flagged = result.quality.flagged_frames
    if not flagged:
        return "no frame flagged"
    return (
        f"FLAGGED frames {flagged} (similarity < {MIN_SIMILARITY} or folding > {MAX_FOLDING_PERCENT} %): "
        "their labels and strain may be wrong"
    )


def summary(result: TrackResult, method: str) -> dict[str, object]:
    """The figures of ``summary.json``."""
    curves = result.curves
    return {
        "method": method,
        "labelled_frame": result.reference,
        "frames": len(result.labels),
        "ed_frame": curves.ed,
        "es_frame": curves.es,
        "ejection_fraction_percent": _figure(curves.ejection_fraction),
        "gls_endo_percent": _figure(curves.gls_endo[curves.es]),
        "gls_mid_percent": _figure(curves.gls_mid[curves.es]),
        "radial_percent": _figure(curves.radial[curves.es]),
        "units": curves.units,
        "flagged_frames": result.quality.flagged_frames,
        "quality_thresholds": {"min_similarity": MIN_SIMILARITY, "max_folding_percent": MAX_FOLDING_PERCENT},
    }


def run(args: argparse.Namespace) -> int:
    """Read and check everything, track, then write the outputs; prints one summary line."""
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"{args.output} exists and is not a folder")
    sequence, units = read_frames(args.sequence)
    frames = sequence.array
    if not 0 <= args.frame < len(frames):
        raise InputError(f"--frame {args.frame} is outside the sequence's frames 0..{len(frames) - 1}")
    labels = check_labels(read_image(args.labels, ndim=2), frames.shape[1:], "label map")
    method, described = pair_method(args.method, args.model, args.backend, args.device)
    started = time.perf_counter()
    result = track_sequence(frames, labels, args.frame, method, sequence.spacing[:2], units, progress=True)
    seconds = time.perf_counter() - started
    interval = sequence.frame_interval or 1.0
    times = np.arange(len(frames)) * interval
    figures = summary(result, described)

    args.output.mkdir(parents=True, exist_ok=True)
    write_image(args.output / "labels.mha", dataclasses.replace(sequence, array=result.labels))
    write_image(args.output / "displacement.mha", displacement_in_mm(result.displacements, sequence))
    write_csv(args.output / "strain.csv", result, times)
    save_strain_plot(
        args.output / "strain.png",
        result.curves,
        times,
        quality=result.quality,
        title=f"{args.sequence.name}: {described}, frame {args.frame}",
    )
    with atomic_write(args.output / "summary.json") as staged:
        staged.write_text(json.dumps(figures, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(
        f"wrote {args.output}/{{{','.join(OUTPUT_FILES)}}}: {len(frames)} frames tracked from frame {args.frame} by "
        f"{described} in {seconds:.1f} s; ED {result.curves.ed}, ES {result.curves.es}, EF "
        f"{result.curves.ejection_fraction:.1f} %, GLS {result.curves.gls:.1f} %; {_flag_text(result)}"
    )
    return 0
