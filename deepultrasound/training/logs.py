"""Training logs, written by the main process only: CSV rows and TensorBoard scalars keyed by the
global step, and validation sample images as TensorBoard images and PNG files."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from deepultrasound.io.atomic import atomic_write

_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NOT_FIGURES = ("step", "epoch", "stage", "seconds")
METRICS_CSV = "metrics.csv"


def image_array(name: str, image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A validation image as float32 ``(H, W)`` (grey) or ``(3, H, W)`` (RGB) in [0, 1]; ValueError otherwise."""
    if not _IMAGE_NAME.fullmatch(name):
        raise ValueError(f"image name {name!r} must be a file name of letters, digits, '_', '.' and '-'")
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 3)):
        raise ValueError(f"image {name!r} must be (H, W) or (3, H, W), got shape {array.shape}")
    if not np.isfinite(array).all() or array.min(initial=0.0) < 0 or array.max(initial=0.0) > 1:
        raise ValueError(
            f"image {name!r} must hold finite values in [0, 1] (got [{np.nanmin(array):.4g}, {np.nanmax(array):.4g}]); "
            "clamp or rescale it in validation_step"
        )
    return array.astype(np.float32, copy=False)


class TrainingLog:
    """Appends records to ``metrics.csv`` and TensorBoard event files under ``directory``.

    A record holds ``step`` (global steps done), ``epoch`` (0-based), ``stage`` and numeric values;
    TensorBoard plots them against ``step``. The CSV grows new columns when later records report
    new keys (validation metrics appear only at validation steps); it is then rewritten whole,
    so it always has one header. A run resumed at ``resume_step`` keeps the rows up to that step
    and drops the later ones (logged after the checkpoint it resumes from).
    """

    def __init__(self, directory: Path, resume_step: int = 0) -> None:
        self.directory = directory
        self.csv_path = directory / METRICS_CSV
        self.rows: list[dict[str, float | int | str]] = []
        if resume_step:
            self.rows = logged_rows(self.csv_path, resume_step)
        self.writer = SummaryWriter(
            log_dir=str(directory / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )

    def log(self, record: Mapping[str, float | int | str]) -> None:
        """Record one row (see the class docstring)."""
        self.rows.append(dict(record))
        for key, value in record.items():
            if key not in ("step", "epoch", "stage") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, int(record["step"]))
        self.writer.flush()
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        with self.csv_path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Write arrays from :func:`image_array` to TensorBoard and, atomically, to ``images/<step>/<name>.png``."""
        for name, array in images.items():
            self.writer.add_image(f"images/{name}", array, step, dataformats="HW" if array.ndim == 2 else "CHW")
            pixels = np.round(array * 255).astype(np.uint8)
            with atomic_write(self.directory / "images" / str(step) / f"{name}.png") as staged:
                Image.fromarray(pixels if pixels.ndim == 2 else pixels.transpose(1, 2, 0)).save(staged, format="PNG")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def logged_rows(csv_path: Path, step: int) -> list[dict[str, str]]:
    """The rows of a :class:`TrainingLog`'s ``metrics.csv`` logged at or before global step ``step`` (empty
    cells are ``""``); none when the file does not exist."""
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="") as stream:
        return [row for row in csv.DictReader(stream) if int(row["step"]) <= step]


def logged_figures(csv_path: Path, step: int) -> dict[str, float]:
    """The figures a run had logged by global step ``step``, as its bundle's manifest holds them: for each loss and
    validation column of ``csv_path`` (a :class:`TrainingLog`'s ``metrics.csv``), its value in the last row at or
    before ``step`` that has one; learning rates and timings left out. Empty when the file does not exist."""
    figures: dict[str, float] = {}
    for row in logged_rows(csv_path, step):
        figures.update(
            (key, float(value))
            for key, value in row.items()
            if value and key not in _NOT_FIGURES and not key.startswith("lr/")
        )
    return figures
