"""``deepultrasound synth-dataset LABEL_DIR -o OUT``: a synthetic CAMUS-like dataset from a folder of label maps.

LABEL_DIR: label maps found anywhere below it (hidden folders skipped): the ``*_gt`` files where there
are any (the CAMUS layout, ``patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}_gt.nii.gz``; their images are
ignored), else every image file. Each label map gives ``--n`` image and label pairs in OUT, in the
layout :class:`~deepultrasound.io.camus.CamusDataset` reads and the ``us-diffusion`` trainer trains on:

- ``OUT/<folder>/<name>.nii.gz``: the image on the label map's grid and geometry, uint8 (grey in
  [0, 1] times 255, as CAMUS images are stored; 0 outside the fan of an echo model);
- ``OUT/<folder>/<name>_gt.nii.gz``: the label map as given, uint8, except that an echo model's
  outside-the-fan class becomes background 0 (CAMUS label maps hold 0-3).

``<name>`` is the label file's name without ``_gt`` and extension, ``<folder>`` its patient
(``patientXXXX``) or, for other names, ``<name>`` itself. With ``--n`` above 1, sample k (from 0) of
``patientXXXX`` becomes patient ``patientXXXX`` followed by k in as many digits as ``n - 1`` has (CAMUS
readers index items by the patient number in the file name, so each sample needs a number of its own),
and sample k of any other name ``<name>_s<k>``. A 3D label map gives 3D images, one slice per slice.

Every label map is read and checked before anything is written; each file is written atomically, and a
label map whose pairs all exist is skipped, so an interrupted run resumes. Sample k of a label map
depends on ``--seed`` and the map's path relative to LABEL_DIR only.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deepultrasound.errors import DeepUltrasoundError, InputError
from deepultrasound.io import Image, write_image
from deepultrasound.io.images import READ_SUFFIXES, image_suffix
from deepultrasound.synthesis.command import (
    add_synthesis_options,
    describe,
    load_synthesizer,
    read_labels,
    stacked,
    synthesise_onto,
)
from deepultrasound.synthesis.inference import Synthesizer, prepare_labels

logger = logging.getLogger(__name__)

LABEL_SUFFIX = "_gt"
"""What ends the name of a CAMUS label map (before its extension)."""
OUTPUT_SUFFIX = ".nii.gz"
_PATIENT = re.compile(r"^(patient\d+)_")


@dataclass(frozen=True)
class Item:
    """One label map of LABEL_DIR and the (image, labels) files of its samples in OUT."""

    source: Path
    relative: str
    outputs: tuple[tuple[Path, Path], ...]

    @property
    def done(self) -> bool:
        """Every sample's image and label files exist."""
        return all(path.exists() for pair in self.outputs for path in pair)


def label_files(folder: Path) -> list[Path]:
    """Label maps below ``folder``, sorted: the ``*_gt`` image files if there are any, else every image file."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            if any(path.name.lower().endswith(suffix) for suffix in READ_SUFFIXES):
                found.append(path)
    labelled = [path for path in found if _stem(path).endswith(LABEL_SUFFIX)]
    return labelled or found


def _stem(path: Path) -> str:
    return path.name[: -len(image_suffix(path))]


def output_pairs(name: str, out: Path, n: int) -> tuple[tuple[Path, Path], ...]:
    """(image, labels) paths of the ``n`` samples of the label map named ``name`` (see the module docstring)."""
    patient = match.group(1) if (match := _PATIENT.match(name)) else None
    pairs = []
    for k in range(n):
        if n == 1:
            folder, stem = patient or name, name
        elif patient is not None:
            folder = f"{patient}{k:0{len(str(n - 1))}d}"
            stem = folder + name[len(patient) :]
        else:
            folder = stem = f"{name}_s{k}"
        pairs.append((out / folder / f"{stem}{OUTPUT_SUFFIX}", out / folder / f"{stem}{LABEL_SUFFIX}{OUTPUT_SUFFIX}"))
    return tuple(pairs)


def plan(label_dir: Path, out: Path, n: int) -> list[Item]:
    """The items of every label map below ``label_dir``.

    Raises:
        InputError: ``label_dir`` is not a folder or holds no label maps, ``out`` lies inside it, or two label
            maps would write the same files.
    """
    if not label_dir.is_dir():
        raise InputError(f"{label_dir} is not a folder of label maps")
    if out.resolve().is_relative_to(label_dir.resolve()):
        raise InputError(f"the output folder {out} lies inside {label_dir}; a later run would read its outputs")
    items, writers = [], {}
    for path in label_files(label_dir):
        stem = _stem(path)
        name = stem[: -len(LABEL_SUFFIX)] if stem.endswith(LABEL_SUFFIX) else stem
        item = Item(path, path.relative_to(label_dir).as_posix(), output_pairs(name, out, n))
        for image, _ in item.outputs:
            if image in writers:
                raise InputError(f"{writers[image]} and {path} would both be written to {image}; rename one")
            writers[image] = path
        items.append(item)
    if not items:
        raise InputError(f"no label maps ({', '.join(READ_SUFFIXES)}) below {label_dir}")
    return items


def camus_labels(labels: Image, synthesizer: Synthesizer) -> Image:
    """The label map as uint8 CAMUS values: an echo model's outside-the-fan class becomes background 0."""
    outside = synthesizer.spec.bmap.outside_label
    array = labels.array if outside is None else np.where(labels.array == outside, 0, labels.array)
    return Image(array.astype(np.uint8), labels.spacing, labels.origin, labels.direction)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound synth-dataset``."""
    parser.add_argument("labels", type=Path, help="folder of label maps (CAMUS layout *_gt files, or any)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the CAMUS-like dataset to")
    add_synthesis_options(parser)


def run(args: argparse.Namespace) -> int:
    """Check every label map, then synthesise and write pair by pair; the last stdout line is a summary."""
    items = plan(args.labels, args.output, args.n)
    todo = [item for item in items if not item.done]
    synthesizer = load_synthesizer(args)
    loaded = []
    for item in todo:
        try:
            labels = read_labels(item.source)
            prepared, notes = prepare_labels(labels.array, synthesizer.spec)
        except DeepUltrasoundError as error:
            raise type(error)(f"{item.source}: {error}") from error
        for note in notes:
            logger.info("%s: %s", item.relative, note)
        loaded.append((item, labels, prepared))
    started = time.perf_counter()
    for item, labels, prepared in tqdm(loaded, desc="label maps", unit="map"):
        seed = int(np.random.SeedSequence([args.seed, zlib.crc32(item.relative.encode())]).generate_state(1)[0])
        images = synthesise_onto(synthesizer, prepared, labels.array.shape[-2:], args, seed, progress=False)
        grey = np.rint(images * 255.0).astype(np.uint8)
        for k, (image_path, labels_path) in enumerate(item.outputs):
            write_image(image_path, stacked(grey[k :: args.n], labels))
            write_image(labels_path, camus_labels(labels, synthesizer))
    seconds = time.perf_counter() - started
    print(
        f"wrote {len(todo) * args.n} image and label pairs of {len(todo)} label maps to {args.output} "
        f"({len(items) - len(todo)} maps already done), {describe(synthesizer, args)}, {seconds:.1f} s"
    )
    return 0
