"""The CAMUS echocardiography dataset (Leclerc et al., IEEE TMI 2019), in any of its layouts.

Supported layouts (found anywhere below the root, e.g. under ``training/`` or ``database_nifti/``):

- 2019 MetaImage release: ``patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].mhd`` (+ ``.raw``),
  ``patientXXXX_{2CH,4CH}_sequence.mhd`` (the full cycle, no labels) and ``Info_{2CH,4CH}.cfg``
  with ED, ES, NbFrame, Sex, Age, ImageQuality, LVedv, LVesv, LVef.
- newer NIfTI release: ``patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii.gz``,
  ``patientXXXX_{2CH,4CH}_half_sequence[_gt].nii.gz`` (end-diastole to end-systole, labelled
  frame by frame) and ``Info_{2CH,4CH}.cfg`` with ED, ES, NbFrame, Sex, Age, ImageQuality, EF,
  FrameRate.
- flat folders holding the image files of all patients side by side (no ``.cfg``).

Images are apical views with the apex at the top: arrays ``(rows, cols)`` = ``(depth, lateral)``,
sequences ``(frames, rows, cols)``. Label maps use ``CamusLabel``: 0 background, 1 LV cavity
(endocardium inside), 2 myocardium, 3 left atrium.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.image import Image
from deepultrasound.io.images import read_image, read_sequence

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
_SEQUENCE_PARTS = ("sequence", "half_sequence")  # 2019 full cycle, newer ED-to-ES half cycle
_IMAGE_FILE = re.compile(r"^(patient\d+)_(2CH|4CH)_(ED|ES|sequence|half_sequence)(_gt)?\.(mhd|mha|nii|nii\.gz)$")
_INFO_FILE = re.compile(r"^Info_(2CH|4CH)\.cfg$")
_PATIENT_DIR = re.compile(r"^patient\d+$")


class CamusLabel(IntEnum):
    """Values of the CAMUS label maps."""

    BACKGROUND = 0
    LV_CAVITY = 1
    MYOCARDIUM = 2
    LEFT_ATRIUM = 3


@dataclass(frozen=True)
class CamusInfo:
    """One ``Info_{view}.cfg``; a key absent from the file is None.

    Attributes:
        ed_frame, es_frame: 1-based frame numbers of end-diastole and end-systole in the
            patient's sequence file of the same release.
        n_frames: number of frames of that sequence.
        sex: ``"M"`` or ``"F"``.  age: years.  image_quality: ``"Good"``, ``"Medium"`` or ``"Poor"``.
        lv_edv, lv_esv: left-ventricular end-diastolic / end-systolic volume, ml (2019 release).
        lv_ef: ejection fraction, % (``LVef`` in the 2019 release, ``EF`` in the newer one).
        frame_rate: frames per second (newer release).
    """

    ed_frame: int | None = None
    es_frame: int | None = None
    n_frames: int | None = None
    sex: str | None = None
    age: int | None = None
    image_quality: str | None = None
    lv_edv: float | None = None
    lv_esv: float | None = None
    lv_ef: float | None = None
    frame_rate: float | None = None


def _whole_number(text: str) -> int:
    """``"12"`` or ``"12.0"`` -> 12; anything else raises ValueError."""
    number = float(text)
    if not number.is_integer():
        raise ValueError(text)
    return int(number)


# cfg key -> (CamusInfo field, converter); other keys are ignored.
_INFO_KEYS: dict[str, tuple[str, Callable[[str], int | float | str]]] = {
    "ED": ("ed_frame", _whole_number),
    "ES": ("es_frame", _whole_number),
    "NbFrame": ("n_frames", _whole_number),
    "Sex": ("sex", str),
    "Age": ("age", _whole_number),
    "ImageQuality": ("image_quality", str),
    "LVedv": ("lv_edv", float),
    "LVesv": ("lv_esv", float),
    "LVef": ("lv_ef", float),
    "EF": ("lv_ef", float),
    "FrameRate": ("frame_rate", float),
}


def read_camus_info(path: str | os.PathLike[str]) -> CamusInfo:
    """Parse a CAMUS ``Info_{2CH,4CH}.cfg`` file (``Key: value`` lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist")
    values: dict[str, int | float | str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, text = line.partition(":")
        if not sep:
            raise FileFormatError(f"{path} line {number} is not 'Key: value': {line!r}")
        if key.strip() in _INFO_KEYS:
            name, convert = _INFO_KEYS[key.strip()]
            try:
                values[name] = convert(text.strip())
            except ValueError as exc:
                raise FileFormatError(f"{path}: {key.strip()} has an invalid value {text.strip()!r}") from exc
    return CamusInfo(**values)  # type: ignore[arg-type]


class CamusDataset:
    """Index of a CAMUS folder: patients, their images, label maps, sequences and info files.

    Args:
        root: the dataset folder; every layout listed in the module docstring is discovered below it.

    Raises:
        FileFormatError: the root is missing, holds no CAMUS files, or holds two files for the same item.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileFormatError(f"CAMUS root {self.root} is not a folder")
        self._files: dict[tuple[str, str, str, bool], Path] = {}
        self._infos: dict[tuple[str, str], Path] = {}
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                self._index(Path(folder) / name)
        self.patients: list[str] = sorted({key[0] for key in self._files})
        if not self.patients:
            raise FileFormatError(
                f"no CAMUS files (patientXXXX_{{2CH,4CH}}_{{ED,ES}}[_gt].mhd or .nii.gz) under {self.root}"
            )

    def _index(self, path: Path) -> None:
        """Record ``path`` if it is a CAMUS image or info file."""
        if match := _IMAGE_FILE.match(path.name):
            patient, view, part, gt = match.group(1, 2, 3, 4)
            self._add(self._files, (patient, view, part, gt is not None), path)
        elif (match := _INFO_FILE.match(path.name)) and _PATIENT_DIR.match(path.parent.name):
            self._add(self._infos, (path.parent.name, match.group(1)), path)

    @staticmethod
    def _add(table: dict[Any, Path], key: tuple[Any, ...], path: Path) -> None:
        """Record ``path`` under ``key``, refusing a second file for the same item."""
        if key in table:
            raise FileFormatError(f"two CAMUS files for the same item: {table[key]} and {path}; keep one")
        table[key] = path

    def load_image(self, patient: str, view: str, phase: str) -> Image:
        """The ``(rows, cols)`` image of ``patient`` in ``view`` (2CH/4CH) at ``phase`` (ED/ES)."""
        self._check(patient, view)
        if phase not in PHASES:
            raise InputError(f"unknown CAMUS phase {phase!r}; use one of {PHASES}")
        return read_image(self._path(patient, view, phase, False), ndim=2)

    def load(self, patient: str, view: str, phase: str) -> tuple[Image, Image]:
        """The image and its label map (``CamusLabel`` values, same shape) of one view and phase."""
        image = self.load_image(patient, view, phase)
        labels = read_image(self._path(patient, view, phase, True), ndim=2)
        return image, self._checked_labels(labels, image, patient, view, phase)

    def load_sequence(self, patient: str, view: str) -> Image:
        """The ``(frames, rows, cols)`` sequence: full cycle (2019) or ED-to-ES half cycle (newer)."""
        self._check(patient, view)
        for part in _SEQUENCE_PARTS:
            if (patient, view, part, False) in self._files:
                return read_sequence(self._files[patient, view, part, False])
        raise FileFormatError(f"no sequence file for {patient} {view} under {self.root}")

    def load_sequence_labels(self, patient: str, view: str) -> Image:
        """The ``(frames, rows, cols)`` label maps of the half sequence (newer release only)."""
        self._check(patient, view)
        labels = read_sequence(self._path(patient, view, "half_sequence", True))
        return self._checked_labels(labels, self.load_sequence(patient, view), patient, view, "half_sequence")

    def info(self, patient: str, view: str) -> CamusInfo:
        """The parsed ``Info_{view}.cfg`` from the patient's folder."""
        self._check(patient, view)
        if (patient, view) not in self._infos:
            raise FileFormatError(f"no Info_{view}.cfg in a {patient} folder under {self.root}")
        return read_camus_info(self._infos[patient, view])

    def _check(self, patient: str, view: str) -> None:
        """Raise InputError for a patient or view this dataset does not have."""
        if patient not in self.patients:
            raise InputError(
                f"unknown CAMUS patient {patient!r}; {self.root} holds {len(self.patients)} patients "
                f"({self.patients[0]} ... {self.patients[-1]})"
            )
        if view not in VIEWS:
            raise InputError(f"unknown CAMUS view {view!r}; use one of {VIEWS}")

    def _path(self, patient: str, view: str, part: str, labels: bool) -> Path:
        """The indexed file of one item, or FileFormatError naming what is missing."""
        key = (patient, view, part, labels)
        if key not in self._files:
            kind = "label map" if labels else "image"
            raise FileFormatError(f"no {part} {kind} for {patient} {view} under {self.root}")
        return self._files[key]

    def _checked_labels(self, labels: Image, image: Image, patient: str, view: str, part: str) -> Image:
        """Check that a label map matches its image and holds only ``CamusLabel`` values."""
        if labels.array.shape != image.array.shape:
            raise FileFormatError(
                f"{patient} {view} {part}: label map shape {labels.array.shape} differs from the image's "
                f"{image.array.shape}"
            )
        unknown = np.setdiff1d(np.unique(labels.array), [label.value for label in CamusLabel])
        if unknown.size:
            raise FileFormatError(f"{patient} {view} {part}: label map holds values {unknown.tolist()} outside 0-3")
        return labels
