"""``deepultrasound register FIXED MOVING -o DISPLACEMENT``: the displacement of one image pair, in mm.

FIXED and MOVING are 2D images any format of :func:`deepultrasound.io.read_image` (colour becomes
grey), at least 32 pixels per axis, of any size and spacing; MOVING is resampled onto FIXED's grid
when they differ. DISPLACEMENT is a vector image (2 components, float32, mm) on FIXED's grid:
the point ``x`` of FIXED corresponds to ``x + d(x)`` in MOVING (ITK's displacement-field
convention, a grid transform in Slicer). ``--labels`` (MOVING's CAMUS label map) warped onto FIXED
goes to ``--warped-labels`` (nearest label of the warped soft one-hot: no value is invented), MOVING
warped onto FIXED to ``--warped``. The method: the installed registration model (default),
``--model`` a bundle or installed model, or ``--method elastix|farneback|tvl1``.
All inputs are read and checked, and everything computed, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.io import read_image, write_image
from deepultrasound.io.images import WRITE_SUFFIXES, image_suffix
from deepultrasound.registration.images import (
    check_frames,
    check_labels,
    displacement_in_mm,
    resample_onto,
    warp_frame,
    warp_label_array,
)
from deepultrasound.registration.inference import METHODS, NETWORK, pair_method, register_images
from deepultrasound.runtime.options import add_backend_options

IMAGE_HELP = ".mha .mhd .nrrd .nii .nii.gz .png"


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--method``, ``--backend``, ``--device`` (shared with ``deepultrasound track``)."""
    parser.add_argument(
        "--model", default=None, help="model bundle folder or installed model name (default: the installed model)"
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=NETWORK,
        help="network, or a classical baseline: elastix B-spline, Farneback or TV-L1 optical flow (default: network)",
    )
    add_backend_options(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound register``."""
    parser.add_argument("fixed", type=Path, help=f"fixed image ({IMAGE_HELP})")
    parser.add_argument("moving", type=Path, help="moving image")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="displacement to write: vector image in mm on FIXED's grid"
    )
    parser.add_argument("--labels", type=Path, default=None, help="MOVING's label map (CAMUS values 0-3)")
    parser.add_argument("--warped-labels", type=Path, default=None, help="where to write the labels warped onto FIXED")
    parser.add_argument("--warped", type=Path, default=None, help="where to write MOVING warped onto FIXED (float32)")
    add_method_options(parser)


def _check_outputs(args: argparse.Namespace) -> None:
    if (args.labels is None) != (args.warped_labels is None):
        raise InputError("--labels and --warped-labels go together: give both or neither")
    outputs = [path for path in (args.output, args.warped_labels, args.warped) if path is not None]
    for path in outputs:
        image_suffix(path, WRITE_SUFFIXES)  # refuse an unwritable format before the work
        if path.is_dir():
            raise InputError(f"{path} is a folder; give an image file name")
    if len({path.resolve() for path in outputs}) != len(outputs):
        raise InputError("the output files must differ from each other")


def run(args: argparse.Namespace) -> int:
    """Read, register, warp, then write; prints one summary line."""
    _check_outputs(args)
    fixed = check_frames(read_image(args.fixed, ndim=2), "fixed image")
    moving = check_frames(read_image(args.moving, ndim=2), "moving image")
    labels = None
    if args.labels is not None:
        labels = check_labels(read_image(args.labels, ndim=2), moving.array.shape, "moving label map")
    method, described = pair_method(args.method, args.model, args.backend, args.device)
    started = time.perf_counter()
    displacement, moving_on_fixed = register_images(fixed, moving, method)
    seconds = time.perf_counter() - started
    outputs = [(args.output, displacement_in_mm(displacement, fixed))]
    if labels is not None:
        on_fixed = resample_onto(dataclasses.replace(moving, array=labels), fixed, labels=True).array
        outputs.append((args.warped_labels, dataclasses.replace(fixed, array=warp_label_array(on_fixed, displacement))))
    if args.warped is not None:
        warped = warp_frame(moving_on_fixed.array.astype(np.float32), displacement)
        outputs.append((args.warped, dataclasses.replace(fixed, array=warped)))
    for path, image in outputs:
        write_image(path, image)
    magnitude = np.hypot(*displacement_in_mm(displacement, fixed).array.transpose(2, 0, 1))
    print(
        f"wrote {', '.join(str(path) for path, _ in outputs)}: {fixed.array.shape[0]} x {fixed.array.shape[1]} "
        f"displacement by {described} in {seconds:.2f} s, |d| mean {magnitude.mean():.3g} max {magnitude.max():.3g} mm"
    )
    return 0
