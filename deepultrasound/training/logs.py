"""Training logs: one CSV row per epoch and TensorBoard scalars, written by the main process only."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class TrainingLog:
    """Appends epoch records to ``metrics.csv`` and TensorBoard event files under ``directory``.

    The CSV grows new columns when later epochs report new keys (e.g. validation metrics that
    appear every ``validation_freq`` epochs); it is rewritten whole in that case, so it always
    has one header. A resumed run keeps the rows of the epochs it has already done.
    """

    def __init__(self, directory: Path, resume_epoch: int = 0) -> None:
        self.csv_path = directory / "metrics.csv"
        self.rows: list[dict[str, float | int | str]] = []
        if resume_epoch and self.csv_path.is_file():
            with self.csv_path.open(newline="") as stream:
                self.rows = [row for row in csv.DictReader(stream) if int(row["epoch"]) < resume_epoch]
        self.writer = SummaryWriter(log_dir=str(directory / "tensorboard"), purge_step=resume_epoch or None)

    def log(self, record: dict[str, float | int | str]) -> None:
        """Record one epoch; ``record`` holds ``epoch``, ``stage`` and numeric values."""
        self.rows.append(record)
        for key, value in record.items():
            if key not in ("epoch", "stage") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, int(record["epoch"]))
        self.writer.flush()
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        with self.csv_path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        self.writer.close()
