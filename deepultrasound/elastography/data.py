"""Training data of the DeepUSE task: RF sequences (simulated with truth, or real) and random crops.

Simulated sequences are named by their seed (see :mod:`deepultrasound.elastography.splits`) and
take seconds each to make (about 10 s for 2000 x 128 x 6 frames), so they are cached on disk, one
``.npz`` per (simulation config, seed), written atomically: a run killed while simulating leaves
no half-written file, and several processes may fill the same cache. :func:`prepare_simulated`
fills a cache ahead of training (with a progress bar); the datasets call it on the seeds they use.

Real sequences (e.g. the in vivo forearm data) are read with :func:`deepultrasound.io.read_sequence`;
their truth is unknown, so they only serve unsupervised training.

Every frame is normalised on its whole extent with the bundle's normalisation
(:func:`~deepultrasound.elastography.inference.normalise_frame`) before any crop, exactly as
inference does on full frames.

With pre-alignment (:mod:`deepultrasound.elastography.prealign`), each sequence also holds its
frames warped onto their predecessors (:attr:`RFSequence.aligned`), cropped with the RF.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deepultrasound.elastography.inference import normalise_frame
from deepultrasound.elastography.strain import window_samples
from deepultrasound.errors import ConfigError, FileFormatError
from deepultrasound.io.atomic import atomic_write
from deepultrasound.simulation import SimulationConfig, simulate_sequence

CACHE_VERSION = 1
"""Bumped when the cached content changes; part of every cache file name."""


@dataclass(frozen=True)
class RFSequence:
    """One RF sequence in memory.

    Attributes:
        rf: ``(N, H, W)`` float32 frames, already normalised.
        strain: ``(N-1, H, W)`` float32 true axial strain in % from frame 0 to frame k (index
            k - 1), or None for real data.
        name: where it came from (seed or file), for messages.
        aligned: ``(N-1, H, W)`` frame k warped onto frame k - 1 (index k - 1, see
            :func:`~deepultrasound.elastography.prealign.prealigned_previous`), or None without
            pre-alignment.
    """

    rf: np.ndarray
    strain: np.ndarray | None
    name: str
    aligned: np.ndarray | None = None


def cache_path(cache_dir: str | os.PathLike[str], config: SimulationConfig, seed: int) -> Path:
    """``cache_dir/sim-v<version>-<config hash>-<seed>.npz``: the cache file of one simulated sequence."""
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"sim-v{CACHE_VERSION}-{digest}-{seed}.npz"


def prepare_simulated(
    cache_dir: str | os.PathLike[str], config: SimulationConfig, seeds: Sequence[int], progress: bool = True
) -> list[Path]:
    """Simulate (once) and cache the sequences of ``seeds``; returns their cache files.

    Files already present are kept. Each file holds ``rf`` ``(N, H, W)`` float32 (max |rf| = 1
    per frame, as simulated) and ``strain`` ``(N-1, H, W)`` float32 in %, frame 0 -> k.
    """
    paths = [cache_path(cache_dir, config, seed) for seed in seeds]
    missing = [(seed, path) for seed, path in zip(seeds, paths) if not path.is_file()]
    for seed, path in tqdm(missing, desc="simulating sequences", unit="sequence", disable=not progress or not missing):
        sequence = simulate_sequence(config, seed)
        with atomic_write(path) as staged, open(staged, "wb") as stream:
            np.savez(stream, rf=sequence.rf, strain=sequence.strain_percent)
    return paths


def load_simulated(path: Path, normalisation: str) -> RFSequence:
    """Read a cache file written by :func:`prepare_simulated`; frames normalised with ``normalisation``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            rf, strain = data["rf"], data["strain"]
    except (OSError, ValueError, KeyError) as error:
        raise FileFormatError(
            f"cannot read the cached sequence {path} ({error}); delete it to simulate it again"
        ) from None
    return RFSequence(np.stack([normalise_frame(frame, normalisation) for frame in rf]), strain, path.name)


def load_real(path: str | os.PathLike[str], normalisation: str) -> RFSequence:
    """Read a real RF sequence file ``(frames, rows, cols)``; frames normalised with ``normalisation``."""
    from deepultrasound.elastography.inference import prepare_rf
    from deepultrasound.io import read_sequence

    rf = prepare_rf(read_sequence(path, min_frames=2, require_finite=True).array)
    return RFSequence(np.stack([normalise_frame(frame, normalisation) for frame in rf]), None, Path(path).name)


class SequenceCrops(Dataset):
    """Random crops of RF sub-sequences for training: sample ``i`` depends only on (seed, i).

    Sample ``i`` picks a sequence, ``length`` consecutive frames starting at a random frame, a
    random ``patch`` (rows, lines) crop and, with ``flip_lateral``, a random left-right flip (a
    mirrored probe sees mirrored tissue under the same axial compression). The first frame of
    the sub-sequence is the fixed frame of every pair.

    Items: ``{"rf": (length, rows, lines) float32}``, plus ``"aligned": (length-1, rows, lines)``
    (the same crop of :attr:`RFSequence.aligned`) when every sequence has it.

    Args:
        sequences: the sources (any mix of simulated and real).
        length: frames per sample, >= 2.
        patch: (rows, lines) of the crop.
        samples: the dataset length (crops per epoch).
        seed: the task seed.
        flip_lateral: mirror half of the samples left-right.
    """

    def __init__(
        self,
        sequences: Sequence[RFSequence],
        length: int,
        patch: tuple[int, int],
        samples: int,
        seed: int,
        flip_lateral: bool = True,
    ) -> None:
        if not sequences:
            raise ConfigError("no training sequences: give simulated sequences or real sequence files")
        for sequence in sequences:
            frames, rows, lines = sequence.rf.shape
            if frames < length or rows < patch[0] or lines < patch[1]:
                raise ConfigError(
                    f"sequence {sequence.name} is {frames} x {rows} x {lines} (frames x rows x lines), too small "
                    f"for samples of {length} frames of {patch[0]} x {patch[1]}; lower sequence_length or patch_size"
                )
        self.sequences = list(sequences)
        self.length = length
        self.patch = patch
        self.samples = samples
        self.seed = seed
        self.flip_lateral = flip_lateral

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.samples:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

        def draw(high: int) -> int:
            return int(torch.randint(high, (), generator=generator))

        sequence = self.sequences[draw(len(self.sequences))]
        frames, rows, lines = sequence.rf.shape
        start, top, left = (
            draw(frames - self.length + 1),
            draw(rows - self.patch[0] + 1),
            draw(lines - self.patch[1] + 1),
        )
        window = (slice(top, top + self.patch[0]), slice(left, left + self.patch[1]))
        item = {"rf": sequence.rf[start : start + self.length, window[0], window[1]]}
        if all(source.aligned is not None for source in self.sequences):
            item["aligned"] = sequence.aligned[start : start + self.length - 1, window[0], window[1]]
        flip = self.flip_lateral and draw(2)
        return {
            key: torch.from_numpy(value.copy()).flip(-1).contiguous() if flip else torch.from_numpy(value.copy())
            for key, value in item.items()
        }


class ValidationSequences(Dataset):
    """Simulated sequences with truth for validation: the first ``length`` frames, a centred crop.

    Items: ``{"rf": (length, rows, lines) float32, "strain": (length-1, rows, lines) float32`` true
    axial strain in % from the first frame, ``"region": (rows, lines) bool}`` where the region
    holds the rows on which a least-squares strain window of ``window_mm`` is complete.

    Args:
        sequences: simulated sequences (with truth).
        length: frames per sample, >= 2.
        patch: (rows, lines) of the centred crop.
        window_mm: the least-squares strain window of the evaluation, mm.
        axial_spacing_mm: axial sample spacing, mm.
    """

    def __init__(
        self,
        sequences: Sequence[RFSequence],
        length: int,
        patch: tuple[int, int],
        window_mm: float,
        axial_spacing_mm: float,
    ) -> None:
        self.items = []
        half = window_samples(window_mm, axial_spacing_mm) // 2
        if 2 * half + 1 > patch[0]:
            raise ConfigError(
                f"the evaluation strain window ({window_mm} mm = {2 * half + 1} samples) is longer than the "
                f"validation patch ({patch[0]} rows); raise val_patch_size or lower eval_window_mm"
            )
        region = torch.zeros(patch, dtype=torch.bool)
        region[half : patch[0] - half] = True
        for sequence in sequences:
            frames, rows, lines = sequence.rf.shape
            if sequence.strain is None or frames < length or rows < patch[0] or lines < patch[1]:
                raise ConfigError(
                    f"validation sequence {sequence.name} ({frames} x {rows} x {lines}) needs truth and at least "
                    f"{length} frames of {patch[0]} x {patch[1]}; lower sequence_length or val_patch_size"
                )
            top, left = (rows - patch[0]) // 2, (lines - patch[1]) // 2
            window = (slice(top, top + patch[0]), slice(left, left + patch[1]))
            self.items.append(
                {
                    "rf": torch.from_numpy(sequence.rf[:length, window[0], window[1]].copy()),
                    "strain": torch.from_numpy(sequence.strain[: length - 1, window[0], window[1]].copy()),
                    "region": region,
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]
