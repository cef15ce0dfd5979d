"""``deepultrasound superres IN --factor F -o OUT``: an image or sequence with F times more lines.

IN is a 2D image or a sequence / 3D volume (frames along the third axis, each frame upsampled on
its own) in a format :func:`deepultrasound.io.read_image` reads; lines run along x, the first image
axis. OUT lies on the fine grid: x spacing divided by F, same origin (line k of IN is line k F of
OUT), the other axes and the direction unchanged, in IN's dtype (colour input becomes grey). The
work is done by :func:`deepultrasound.superres.inference.superresolve_image`: the installed model of
factor F (default), a bundle (``--model``), or linear/cubic interpolation (``--method``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from deepultrasound.io import read_image, write_image
from deepultrasound.io.images import WRITE_SUFFIXES, image_suffix
from deepultrasound.runtime.options import add_backend_options
from deepultrasound.superres.degradation import METHODS, check_factor
from deepultrasound.superres.inference import DEFAULT_TILE, SuperResolver, resolve_model, superresolve_image


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound superres``."""
    parser.add_argument("input", type=Path, help="image or sequence: .mha .mhd .nrrd .nii .nii.gz .png")
    parser.add_argument("--factor", type=int, required=True, help="lateral factor F >= 2: lines are multiplied by F")
    parser.add_argument("-o", "--output", type=Path, required=True, help="image to write: .mha .mhd .nrrd .nii.gz")
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--model", default=None, help="model bundle folder or installed model name (default: the model of factor F)"
    )
    how.add_argument("--method", choices=METHODS, default=None, help="classical interpolation instead of a network")
    parser.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help=f"largest tile run through the network at once, input rows and lines (default: {DEFAULT_TILE})",
    )
    add_backend_options(parser)


def run(args: argparse.Namespace) -> int:
    """Read, upsample, write atomically; the last stdout line is a one-line summary."""
    check_factor(args.factor)
    image_suffix(args.output, WRITE_SUFFIXES)  # refuse an unwritable format before the work
    image = read_image(args.input)
    started = time.perf_counter()
    if args.method is None:
        model = SuperResolver(resolve_model(args.model, args.factor), args.factor, args.tile, args.backend, args.device)
        lowest, highest = (sigma / args.factor for sigma in model.blur_sigma_lines)
        if highest == 0:
            beam = "line decimation alone"
        else:
            span = f"{highest:.2g}" if lowest == highest else f"{lowest:.2g} to {highest:.2g}"
            beam = f"lateral beam profiles of sigma {span} input lines"
        options = {"model": model}
        used = f"model {model.name} ({model.predictor.backend}, {model.predictor.device}; trained for {beam})"
    else:
        options, used = {"method": args.method}, f"{args.method} interpolation"
    fine = superresolve_image(image, args.factor, progress=True, **options)
    write_image(args.output, fine)
    seconds = time.perf_counter() - started
    print(
        f"wrote {args.output}: {' x '.join(map(str, image.array.shape))} -> {' x '.join(map(str, fine.array.shape))} "
        f"{fine.array.dtype}, x{args.factor} by {used}, {seconds:.2f} s"
    )
    return 0
