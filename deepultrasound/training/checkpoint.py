"""Training checkpoints: self-describing, written atomically, loaded without unpickling code.

A checkpoint is a ``torch.save`` of plain containers and tensors only: the validated config (as a
dict), the position in training (next epoch), every network's and optimiser's state, EMA copies,
and the RNG state. Loading uses ``torch.load(..., weights_only=True)``, which refuses arbitrary
pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from deepultrasound.errors import FileFormatError

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for missing or corrupt files."""
    if not path.is_file():
        raise FileFormatError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise FileFormatError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"{path} is not a deepultrasound training checkpoint (format {CHECKPOINT_FORMAT})")
    return state
