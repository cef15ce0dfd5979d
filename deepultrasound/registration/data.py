"""Registration pairs: CAMUS ED/ES pairs with their labels, and simulated pairs with the true motion.

Every pair is a dict of tensors on an ``(S, S)`` grid (:mod:`deepultrasound.registration.preprocessing`):

- ``fixed``, ``moving``: ``(1, S, S)`` float32 B-mode in [0, 1];
- ``fixed_labels``, ``moving_labels``: ``(S, S)`` int64 CAMUS labels (0 background, 1 LV cavity,
  2 myocardium, 3 left atrium);
- simulated pairs only: ``displacement``: ``(2, S, S)`` float32 in pixels of the ``S`` grid, channel 0
  lateral, channel 1 axial, ``moving(p + u(p)) ~ fixed(p)``.

CAMUS split: patients sorted by id, the last :data:`VALIDATION_PATIENTS` are validation and are
never trained on (:func:`camus_split`). Simulated pairs are drawn at CAMUS's 224 x 224 grid
(:data:`SIMULATION_SIZE`) and resampled exactly as CAMUS frames are, so both reach the network with
the same pixel geometry and speckle filtering. The training task never draws simulated pairs from
:data:`HELD_OUT_SYNTHETIC_SEED`: validation and benchmarks use it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.camus import VIEWS, CamusDataset, CamusLabel
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.registration.preprocessing import prepare_frame, resize_labels
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator
from deepultrasound.spatial import resize_displacement

VALIDATION_PATIENTS = 20
"""The last patients (sorted by id) kept for validation."""
NUM_CLASSES = len(CamusLabel)
"""Label values 0..3 (:class:`~deepultrasound.io.camus.CamusLabel`)."""
SIMULATION_SIZE = 224
"""Simulated frames are drawn on CAMUS's grid (pixels) and resampled like CAMUS frames."""
HELD_OUT_SYNTHETIC_SEED = 9_999
"""Seed of the held-out simulated pairs (validation, benchmarks); the training task refuses it."""
EJECTION_FRACTION = (30.0, 70.0)
"""Range (%) of the simulated hearts' ejection fractions."""
ES_PHASE = (0.3, 0.4)
"""Range of the simulated end-systolic phase (fraction of the cycle after end-diastole)."""
GAIN_DB = (-18.0, -10.0)
"""Range of the simulated scanner gain (the simulator's default, -14 dB, is tuned to CAMUS)."""

_STREAMS = ("ed_es", "random_phases", "labels", "sequences")  # independent draws of simulated hearts from one seed

Pair = dict[str, torch.Tensor]


def camus_split(root: str | os.PathLike[str], validation: int = VALIDATION_PATIENTS) -> tuple[list[str], list[str]]:
    """(training patients, validation patients) of a CAMUS folder: ids sorted, the last ``validation`` validate.

    Raises:
        FileFormatError: the folder holds no more than ``validation`` patients (nothing left to train on).
    """
    patients = CamusDataset(root).patients  # sorted by id
    if validation < 1 or len(patients) <= validation:
        raise FileFormatError(
            f"CAMUS folder {root} holds {len(patients)} patients; the split keeps the last {validation} for "
            "validation and needs at least one more to train on"
        )
    return patients[:-validation], patients[-validation:]


def camus_pairs(root: str | os.PathLike[str], patients: Sequence[str], size: int) -> Iterator[Pair]:
    """ED fixed, ES moving pair of each view (2CH, then 4CH) of each patient, on an ``(size, size)`` grid."""
    dataset = CamusDataset(root)
    for patient in patients:
        for view in VIEWS:
            (fixed, fixed_labels), (moving, moving_labels) = (dataset.load(patient, view, p) for p in ("ED", "ES"))
            yield {
                "fixed": prepare_frame(fixed.array, (size, size)),
                "moving": prepare_frame(moving.array, (size, size)),
                "fixed_labels": resize_labels(fixed_labels.array, (size, size), NUM_CLASSES),
                "moving_labels": resize_labels(moving_labels.array, (size, size), NUM_CLASSES),
            }


def synthetic_pairs(seed: int, count: int, size: int, random_phases: bool = False) -> Iterator[Pair]:
    """``count`` simulated pairs with the true displacement, on an ``(size, size)`` grid.

    Pair ``k`` is a function of ``(seed, k, random_phases)`` only: a heart of its own (2CH or 4CH,
    EF drawn from :data:`EJECTION_FRACTION`, end-systole from :data:`ES_PHASE`, gain from
    :data:`GAIN_DB`, shape, size and depth drawn by the simulator). Fixed is end-diastole and moving
    end-systole, or, with ``random_phases``, two phases drawn uniformly over the cycle.
    """
    if count < 0 or size < 1:
        raise InputError(f"count must be >= 0 and size >= 1, got {count} and {size}")
    for index in range(count):
        fixed, moving, fixed_labels, moving_labels, displacement = _simulated_pair(seed, index, random_phases)
        yield {
            "fixed": prepare_frame(fixed, (size, size)),
            "moving": prepare_frame(moving, (size, size)),
            "fixed_labels": resize_labels(fixed_labels, (size, size), NUM_CLASSES),
            "moving_labels": resize_labels(moving_labels, (size, size), NUM_CLASSES),
            "displacement": resize_displacement(torch.from_numpy(displacement)[None], (size, size))[0],
        }


def simulated_labels(seed: int, count: int, size: int) -> Iterator[torch.Tensor]:
    """``count`` simulated ``(size, size)`` int64 label maps, each of its own heart at a phase drawn over the cycle.

    Map ``k`` is a function of ``(seed, k)``; the hearts are drawn as :func:`synthetic_pairs` draws them.
    """
    if count < 0 or size < 1:
        raise InputError(f"count must be >= 0 and size >= 1, got {count} and {size}")
    for index in range(count):
        simulator, rng = _simulator(seed, index, "labels")
        yield resize_labels(simulator.labels(float(rng.uniform(0.0, 1.0))), (size, size), NUM_CLASSES)


def synthetic_sequence(seed: int, index: int, frames: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float]:
    """A simulated cine from end-diastole to end-systole with its truth, a function of ``(seed, index)`` only.

    Returns:
        ``(T, H, W)`` float32 frames (T = ``frames``, phases evenly spaced from ED to ES, on CAMUS's
        :data:`SIMULATION_SIZE` grid), the ``(H, W)`` uint8 labels of end-diastole, the pixel size
        (lateral, axial) in mm, and the simulator's global longitudinal strain at ES in %.
    """
    if frames < 2:
        raise InputError(f"a sequence needs at least 2 frames, got {frames}")
    simulator, _ = _simulator(seed, index, "sequences")
    phases = np.linspace(0.0, simulator.config.es_phase, frames)
    images = np.stack([simulator.frame(float(phase)).image for phase in phases]).astype(np.float32)
    labels = simulator.labels(0.0).astype(np.uint8)
    return images, labels, simulator.sector.pixel_mm, float(simulator.global_longitudinal_strain())


def _simulator(seed: int, index: int, stream: str) -> tuple[EchoSimulator, np.random.Generator]:
    """The simulator of item ``index`` of a ``stream`` drawn from ``seed``, and the generator that drew it."""
    rng = np.random.default_rng([seed, index, _STREAMS.index(stream)])
    config = EchoConfig(
        view=VIEWS[int(rng.integers(len(VIEWS)))],
        ejection_fraction=float(rng.uniform(*EJECTION_FRACTION)),
        es_phase=float(rng.uniform(*ES_PHASE)),
        gain_db=float(rng.uniform(*GAIN_DB)),
        height=SIMULATION_SIZE,
        width=SIMULATION_SIZE,
    )
    return EchoSimulator(config, seed=int(rng.integers(2**31))), rng


@functools.lru_cache(maxsize=256)
def _simulated_pair(
    seed: int, index: int, random_phases: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fixed, moving, fixed labels, moving labels, displacement) on the simulation grid.

    Cached (about 1 s per pair on one core), as each stage of a multi-scale run resamples the same pairs.
    """
    simulator, rng = _simulator(seed, index, "random_phases" if random_phases else "ed_es")
    phases = rng.uniform(0.0, 1.0, 2) if random_phases else (0.0, simulator.config.es_phase)
    fixed, moving = (simulator.frame(float(phase)) for phase in phases)
    displacement = simulator.displacement(float(phases[0]), float(phases[1]))
    return fixed.image, moving.image, fixed.labels, moving.labels, displacement


def default_camus_root() -> Path:
    """``<shared data>/camus_train`` (:func:`~deepultrasound.io.shared_data.shared_data_dir`)."""
    return shared_data_dir() / "camus_train"


class PairDataset(Dataset):
    """Pairs of one source as training items: the pair's tensors, ``displacement`` (zeros where the pair has no
    truth), ``has_displacement`` (float32 1 or 0) and ``source`` (int64, the given index)."""

    def __init__(self, pairs: Iterable[Pair], source: int) -> None:
        self.pairs = list(pairs)
        self.source = source

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        pair = self.pairs[index]
        known = "displacement" in pair
        displacement = pair["displacement"] if known else pair["fixed"].new_zeros((2, *pair["fixed"].shape[-2:]))
        return {
            **pair,
            "displacement": displacement,
            "has_displacement": torch.tensor(float(known)),
            "source": torch.tensor(self.source),
        }


def augment_pairs(
    batch: Pair, flip: bool = True, swap: bool = True, log_gamma: float = 0.0, generator: torch.Generator | None = None
) -> Pair:
    """A batch of :class:`PairDataset` items under random label-preserving changes, per sample.

    - ``flip``: half the pairs mirrored left-right (images, labels, and the displacement: mirrored,
      lateral component negated);
    - ``swap``: half the pairs without a true displacement (``has_displacement`` 0) exchange fixed and
      moving (ES to ED as well as ED to ES);
    - ``log_gamma`` > 0: both frames of a pair raised to the power ``exp(U(-log_gamma, log_gamma))``
      (another gain curve; values stay in [0, 1]).

    Random numbers come from ``generator`` (default: torch's global one) on the CPU.
    """
    batch = dict(batch)
    size = batch["fixed"].shape[0]

    def draw() -> torch.Tensor:
        return torch.rand(size, generator=generator).to(batch["fixed"].device)

    if swap:
        exchange = (draw() < 0.5) & (batch["has_displacement"] == 0)
        for first, second in (("fixed", "moving"), ("fixed_labels", "moving_labels")):
            mask = exchange.view(-1, *([1] * (batch[first].ndim - 1)))
            batch[first], batch[second] = (
                torch.where(mask, batch[second], batch[first]),
                torch.where(mask, batch[first], batch[second]),
            )
    if flip:
        mirror = draw() < 0.5
        for key in ("fixed", "moving", "fixed_labels", "moving_labels", "displacement"):
            mask = mirror.view(-1, *([1] * (batch[key].ndim - 1)))
            batch[key] = torch.where(mask, batch[key].flip(-1), batch[key])
        lateral_sign = torch.where(mirror, -1.0, 1.0).to(batch["displacement"])
        batch["displacement"] = batch["displacement"] * torch.stack(
            [lateral_sign, torch.ones_like(lateral_sign)], dim=1
        ).view(-1, 2, 1, 1)
    if log_gamma > 0:
        gamma = torch.exp((2 * draw() - 1) * log_gamma).view(-1, 1, 1, 1).to(batch["fixed"])
        batch["fixed"] = batch["fixed"].clamp(0, 1) ** gamma
        batch["moving"] = batch["moving"].clamp(0, 1) ** gamma
    return batch
