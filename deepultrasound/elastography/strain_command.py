"""``deepultrasound strain IN -o OUT``: RF sequence file -> axial strain sequence file (%).

The output holds N-1 frames of axial strain in % (compression negative) for the N input frames:
frame k is the pair (reference, frame k+1), with the reference the first frame (default) or the
previous one. Spacing, direction and origin are the input's; with ``--crop`` the rows outside
START:STOP are dropped and the origin moves to the first kept row. ``--bmode`` writes the
B-mode (dB, see :mod:`.visualise`) of the same rows, ``--png`` one figure per pair.

Beside the output, ``<OUT stem>_quality.csv`` holds the quality figure of every strain frame
(:class:`~deepultrasound.elastography.metrics.StrainQuality`): columns ``frame`` (1-based, as
the PNG figures), ``fixed``, ``moving`` (input frame indices), ``ncc_before``, ``ncc_after``
and ``flagged`` (1: the estimate does not explain the frames; do not trust that strain frame).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np

from deepultrasound.elastography.baselines import BlockMatchingEstimator
from deepultrasound.elastography.estimators import SequenceStrainEstimator, StrainEstimator, StrainResult
from deepultrasound.elastography.frames import REFERENCES, crop_rows, parse_crop
from deepultrasound.elastography.options import add_inference_options, inference_options
from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM, window_samples
from deepultrasound.elastography.visualise import save_strain_figure
from deepultrasound.io import Image, atomic_write, read_sequence, write_image
from deepultrasound.io.images import WRITE_SUFFIXES, image_suffix
from deepultrasound.spatial import DEFAULT_DYNAMIC_RANGE_DB, bmode_db


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound strain``."""
    parser.add_argument("input", type=Path, help="RF sequence (frames, axial samples, lines): .mha .mhd .nrrd .nii")
    parser.add_argument("-o", "--output", type=Path, required=True, help="axial strain sequence to write (%%)")
    parser.add_argument(
        "--model",
        default=None,
        help="model bundle folder or bundled model name (default: the bundled DeepUSE model, if any)",
    )
    add_inference_options(parser)
    parser.add_argument(
        "--crop",
        type=parse_crop,
        default=None,
        metavar="START:STOP",
        help="keep axial rows START:STOP before estimation, e.g. 100:-300 as in the DeepUSE paper (default: all)",
    )
    parser.add_argument(
        "--reference",
        choices=REFERENCES,
        default="first",
        help="fixed frame of each pair: the first frame or the previous one (default: first)",
    )
    parser.add_argument(
        "--window-mm",
        type=float,
        default=DEFAULT_WINDOW_MM,
        help=f"axial least-squares strain window in mm (default: {DEFAULT_WINDOW_MM})",
    )
    parser.add_argument("--bmode", type=Path, default=None, help="also write the B-mode sequence (dB) here")
    parser.add_argument("--png", type=Path, default=None, metavar="DIR", help="write one PNG figure per pair here")
    parser.add_argument(
        "--baseline", action="store_true", help="use NCC block matching instead of a network (no model needed)"
    )


def _estimator(args: argparse.Namespace) -> SequenceStrainEstimator:
    if args.baseline:
        return BlockMatchingEstimator(device=args.device)
    return StrainEstimator(args.model, **inference_options(args))


def _write_figures(
    folder: Path, stem: str, result: StrainResult, bmode: np.ndarray, image: Image, method: str, window_mm: float
) -> None:
    """One PNG per pair: strain over the B-mode of the pair's fixed frame."""
    half = window_samples(window_mm, image.axial_spacing_mm) // 2
    valid_rows = slice(half, max(half, result.strain.shape[1] - half))
    for k, (fixed, moving) in enumerate(result.pairs):
        note = "" if result.valid[k] else "  (constant frame: not estimated)"
        if result.valid[k] and result.quality[k].flagged:
            note = f"  (FLAGGED: NCC {result.quality[k].ncc_after:.2f} after warping)"
        save_strain_figure(
            folder / f"{stem}_strain_{k + 1:04d}.png",
            result.strain[k],
            bmode[fixed],
            image.spacing[:2],
            image.origin[:2],
            title=f"{stem}: frame {moving} vs {fixed}, {method}{note}",
            valid_rows=valid_rows,
        )


def quality_path(output: Path) -> Path:
    """The quality table written beside ``output``: ``STRAIN.mha`` -> ``STRAIN_quality.csv``."""
    return output.with_name(f"{output.name.split('.')[0]}_quality.csv")


def write_quality(path: Path, result: StrainResult) -> None:
    """One row per strain frame: its pair and :class:`StrainQuality` (see the module docstring); atomic."""
    with atomic_write(path) as staged, staged.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["frame", "fixed", "moving", "ncc_before", "ncc_after", "flagged"])
        for k, ((fixed, moving), quality) in enumerate(zip(result.pairs, result.quality, strict=True)):
            row = [k + 1, fixed, moving, f"{quality.ncc_before:.4f}", f"{quality.ncc_after:.4f}", int(quality.flagged)]
            writer.writerow(row)


def run(args: argparse.Namespace) -> int:
    """Read, estimate, write; prints one summary line."""
    for path in (args.output, args.bmode):
        if path is not None:
            image_suffix(path, WRITE_SUFFIXES)  # refuse an unwritable format before the work
    image = read_sequence(args.input, min_frames=2)
    if args.crop is not None:
        image = crop_rows(image, args.crop)
    estimator = _estimator(args)
    result = estimator.estimate(
        image.array, image.axial_spacing_mm, reference=args.reference, window_mm=args.window_mm, progress=True
    )
    write_image(args.output, dataclasses.replace(image, array=result.strain))
    write_quality(quality_path(args.output), result)
    bmode = bmode_db(image.array) if args.bmode is not None or args.png is not None else None
    if args.bmode is not None:
        write_image(args.bmode, dataclasses.replace(image, array=bmode))
    if args.png is not None:
        stem = args.input.name.split(".")[0]
        _write_figures(args.png, stem, result, bmode, image, estimator.name, args.window_mm)
    frames, height, width = result.strain.shape
    print(
        f"wrote {args.output}: {frames} strain frame(s) of {height} x {width} ({estimator.name}, reference "
        f"{args.reference}), strain {result.strain.min():.3g} .. {result.strain.max():.3g} %"
        + (f"; B-mode {args.bmode} ({DEFAULT_DYNAMIC_RANGE_DB:g} dB range)" if args.bmode else "")
        + (f"; figures in {args.png}" if args.png else "")
        + f"; quality {quality_path(args.output)}: {int(result.flagged.sum())} frame(s) flagged"
    )
    return 0
