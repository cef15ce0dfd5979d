"""Training checkpoints: self-describing, written atomically, loaded without unpickling code.

A checkpoint is a ``torch.save`` of plain containers and tensors only: the validated config (as a
dict), the position in training (global step, stage, epoch and the batch of the epoch to continue
from), every network's, optimiser's, schedule's and gradient scaler's state, EMA copies, and the
RNG states of every process (torch CPU and CUDA, numpy, Python ``random``), so that a run resumed
part-way through an epoch continues exactly. Loading uses ``torch.load(..., weights_only=True)``,
which refuses arbitrary pickled objects.

:func:`initial_weights` reads the weights a new run starts a network from (``init_from``): from a
checkpoint or from a model bundle.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from deepultrasound.errors import ConfigError, FileFormatError

#: 2: per-step position, schedules, gradient scaler and RNG states (format 1 held epochs only)
CHECKPOINT_FORMAT = 2
#: formats whose networks can still be read (e.g. exported); only the current one resumes
READABLE_FORMATS = (1, 2)
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
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise FileFormatError(f"{path} is not a deepultrasound training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def restore_networks(
    networks: Mapping[str, nn.Module], ema: Mapping[str, AveragedModel], state: Mapping[str, Any]
) -> None:
    """Load networks (and EMA copies) from a checkpoint ``state``, strictly."""
    for name, net in networks.items():
        net.load_state_dict(state["networks"][name], strict=True)
    for name, avg in ema.items():
        avg.load_state_dict(state["ema"][name], strict=True)


def exported_weights(state: Mapping[str, Any], network: str) -> dict[str, torch.Tensor]:
    """The state dict of ``network`` in a checkpoint ``state`` as its run exports it: the EMA copy where the
    run keeps one and exports it (``export_ema``), else the online weights."""
    ema = state.get("ema", {})
    if state["config"].get("export_ema", True) and network in ema:
        prefix = "module."  # AveragedModel holds the copy as .module, beside its n_averaged counter
        return {key[len(prefix) :]: value for key, value in ema[network].items() if key.startswith(prefix)}
    return state["networks"][network]


def initial_weights(source: Path, network: str) -> dict[str, torch.Tensor]:
    """Weights to start ``network`` from: a bundle folder's main network, or a checkpoint's network of that name
    (:func:`exported_weights`).

    Raises:
        FileFormatError: ``source`` does not exist or is not a checkpoint.
        BundleError: a bundle that fails its checks.
        ConfigError: a checkpoint without that network.
    """
    if source.is_dir():
        from deepultrasound.runtime.bundle import load_bundle

        return load_bundle(source).build_torch_model().state_dict()
    if not source.exists():
        raise FileFormatError(f"init_from: {source} is neither a model bundle folder nor a checkpoint file")
    state = load_checkpoint(source)
    if network not in state["networks"]:
        raise ConfigError(f"init_from: {source} has no network '{network}'; it has {sorted(state['networks'])}")
    return exported_weights(state, network)


def rng_state() -> dict[str, Any]:
    """This process's random generators' states (torch CPU and CUDA, numpy, Python), as checkpoint data."""
    kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
