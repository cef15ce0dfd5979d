"""``deepultrasound synth LABELS -o OUT``: ultrasound images synthesised from a label map.

LABELS: a 2D label map or a 3D stack of them (one image per slice along the third axis) in a format
of :func:`deepultrasound.io.read_image`, with the model's class values (echo: the CAMUS values 0-3,
and 4 outside the fan where given; :func:`~deepultrasound.synthesis.inference.prepare_labels` says
what it does to them, printed as notes). OUT: ``--n`` images per label slice, generated on the
model's grid and resampled back (linear) onto the label map's grid, with its spacing, origin and
direction, float32 in [0, 1]: a 2D image for one label frame and ``--n 1``, else a 3D stack along
the third axis ordered slice-major (slice 0's images first). The model: ``--model`` (a bundle folder
or an installed name), else the installed model of ``--probe`` (default sector: echo).
Everything is checked and computed before OUT is written (atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.io import Image, read_image, write_image
from deepultrasound.io.images import WRITE_SUFFIXES, image_suffix
from deepultrasound.registration.preprocessing import resize_frame
from deepultrasound.runtime.options import add_backend_options
from deepultrasound.synthesis.bmaps import PROBES
from deepultrasound.synthesis.inference import SAMPLERS, Synthesizer, prepare_labels, resolve_model


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_synthesis_options(parser: argparse.ArgumentParser) -> None:
    """``--n --steps --guidance --sampler --probe --seed --model --backend --device`` (also of ``synth-dataset``)."""
    parser.add_argument("--n", type=positive_int, default=1, help="images per label map (slice) (default: 1)")
    parser.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default: the model's)")
    parser.add_argument(
        "--probe", choices=PROBES, default=None, help="probe of the installed model to use (default: sector, echo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, >= 0 (default: 0)")
    parser.add_argument(
        "--model", default=None, help="model bundle folder or installed model name (default: the probe's model)"
    )
    add_backend_options(parser)


def load_synthesizer(args: argparse.Namespace) -> Synthesizer:
    """The model of ``--model``/``--probe`` on ``--backend``/``--device``; InputError if the named model has another
    probe."""
    synthesizer = Synthesizer(resolve_model(args.model, args.probe), args.device, args.backend)
    probe = synthesizer.spec.bmap.probe
    if args.probe is not None and probe != args.probe:
        raise InputError(f"model {synthesizer.name} is for a {probe} probe, not {args.probe}")
    return synthesizer


def read_labels(path: Path) -> Image:
    """A single-channel 2D label map or 3D stack of label maps; a stack of one slice (as CAMUS ``.mhd`` label
    maps are stored) is read as 2D."""
    labels = read_image(path)
    if labels.multichannel:
        raise InputError(f"{path} holds {labels.array.shape[-1]} channels per pixel; a label map has one")
    return labels.frame(0) if labels.is_sequence and labels.array.shape[0] == 1 else labels


def synthesise_onto(
    synthesizer: Synthesizer,
    prepared: np.ndarray,
    shape: tuple[int, int],
    args: argparse.Namespace,
    seed: int,
    progress: bool,
) -> np.ndarray:
    """``(K n, H, W)`` float32 images in [0, 1] of ``(K, S, S)`` prepared label maps, ``args.n`` per map,
    slice-major, generated on the model's grid and resampled linearly onto the ``(H, W)`` label grid
    (:func:`~deepultrasound.registration.preprocessing.resize_frame`: both grids cover the same field of view);
    ``seed`` and ``progress`` as :class:`~deepultrasound.synthesis.inference.Synthesizer` takes them."""
    images = synthesizer(
        np.repeat(prepared, args.n, axis=0),
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        seed=seed,
        progress=progress,
    )
    return np.stack([resize_frame(image, shape).numpy() for image in images])


def stacked(images: np.ndarray, grid: Image) -> Image:
    """``(F, H, W)`` images on ``grid``'s geometry: a 2D image for one frame on a 2D grid, else a 3D stack
    (a 2D grid's geometry extended by a third axis of spacing 1)."""
    if grid.ndim == 3:
        return dataclasses.replace(grid, array=images)
    if len(images) == 1:
        return dataclasses.replace(grid, array=images[0])
    direction = np.eye(3)
    direction[:2, :2] = np.reshape(grid.direction, (2, 2))
    return Image(images, (*grid.spacing, 1.0), (*grid.origin, 0.0), tuple(direction.ravel()))


def describe(synthesizer: Synthesizer, args: argparse.Namespace) -> str:
    """The model and sampling settings, for a summary line."""
    spec = synthesizer.spec
    steps = args.steps or spec.sampling_steps
    guidance = spec.guidance_scale if args.guidance is None else args.guidance
    return (
        f"model {synthesizer.name} ({synthesizer.backend}, {synthesizer.device}), "
        f"{args.sampler or spec.sampler} {steps} steps, guidance {guidance:g}, seed {args.seed}"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound synth``."""
    parser.add_argument("labels", type=Path, help="label map (2D) or stack (3D): .mha .mhd .nrrd .nii .nii.gz .png")
    parser.add_argument("-o", "--output", type=Path, required=True, help="image to write: .mha .mhd .nrrd .nii.gz")
    add_synthesis_options(parser)


def run(args: argparse.Namespace) -> int:
    """Read, synthesise, resample, write atomically; notes first, the last stdout line is a summary."""
    image_suffix(args.output, WRITE_SUFFIXES)  # refuse an unwritable format before the work
    if args.output.is_dir():
        raise InputError(f"{args.output} is a folder; give an image file name")
    labels = read_labels(args.labels)
    synthesizer = load_synthesizer(args)
    started = time.perf_counter()
    prepared, notes = prepare_labels(labels.array, synthesizer.spec)
    images = synthesise_onto(synthesizer, prepared, labels.array.shape[-2:], args, args.seed, progress=True)
    output = stacked(images, labels)
    write_image(args.output, output)
    seconds = time.perf_counter() - started
    for note in notes:
        print(f"note: {note}")
    size = " x ".join(map(str, synthesizer.size))
    print(
        f"wrote {args.output}: labels {' x '.join(map(str, labels.array.shape))} -> images "
        f"{' x '.join(map(str, output.array.shape))} float32 in [0, 1] (made at {size}, resampled linearly onto "
        f"the label grid), {describe(synthesizer, args)}, {seconds:.1f} s"
    )
    return 0
