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

Pre-alignment: an RF similarity has a basin of about a quarter carrier period (2-4 samples here),
while the axial displacement between frames reaches 20 samples per 1 % compression at 4 cm depth.
:func:`linear_prealignment` fits a uniform-strain field ``a + b z`` to row-block cross-correlation
lags (no truth used); the network then only estimates the residual of the moving frame warped by
it, and :func:`compose_displacements` gives the total. :func:`chained_prealignment` composes the
frame-to-frame fits for pairs (0, k), which stay robust when a direct fit at several % does not.
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
from deepultrasound.elastography.metrics import warp_image
from deepultrasound.elastography.strain import window_samples
from deepultrasound.errors import ConfigError, FileFormatError, InputError
from deepultrasound.io.atomic import atomic_write
from deepultrasound.simulation import SimulationConfig, simulate_sequence

CACHE_VERSION = 1
"""Bumped when the cached content changes; part of every cache file name."""
PREALIGN_BLOCK_ROWS = 128
"""Rows of the cross-correlation blocks of :func:`linear_prealignment` (2.56 mm at 0.02 mm)."""


def _block_lags(fixed: torch.Tensor, moving: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial lag of each half-overlapping row block: ``(centres (K,) rows, lags (B, K) samples)``.

    The lag maximises ``sum f(z) m(z + lag)`` over the block and all lines (one FFT correlation
    per block, up to a quarter of the height), refined by a parabola through the peak.
    """
    height = fixed.shape[-2]
    max_lag = height // 4
    starts = torch.arange(0, height - block + 1, block // 2, device=fixed.device)
    rows = torch.arange(height, device=fixed.device)
    masks = ((rows >= starts[:, None]) & (rows < starts[:, None] + block)).to(fixed)  # (K, H)
    size = 1 << (height + max_lag - 1).bit_length()
    spectrum_fixed = torch.fft.rfft(fixed[:, :1] * masks[None, :, :, None], n=size, dim=-2)  # (B, K, F, W)
    spectrum_moving = torch.fft.rfft(moving[:, :1], n=size, dim=-2)
    correlation = torch.fft.irfft(spectrum_fixed.conj() * spectrum_moving, n=size, dim=-2).sum(-1)  # (B, K, size)
    correlation = torch.cat([correlation[..., size - max_lag :], correlation[..., : max_lag + 1]], dim=-1)
    peak = correlation.argmax(-1).clamp(1, 2 * max_lag - 1)
    minus, centre, plus = (correlation.gather(-1, (peak + d)[..., None])[..., 0] for d in (-1, 0, 1))
    offset = (0.5 * (minus - plus) / (minus - 2 * centre + plus).clamp(max=-1e-12)).clamp(-0.5, 0.5)
    return starts.to(fixed) + (block - 1) / 2, peak - max_lag + offset


def linear_prealignment(
    fixed: torch.Tensor, moving: torch.Tensor, block_rows: int = PREALIGN_BLOCK_ROWS
) -> torch.Tensor:
    """Uniform-strain displacement ``u_axial = a + b z`` (lateral 0) between two frames, in pixels.

    ``a, b`` are a least-squares line through the lags of half-overlapping row blocks, refitted
    twice without the blocks more than max(1, 2 x median) samples off the line (a peak one
    carrier cycle away). Same convention as the networks: ``moving(p + u(p)) ~ fixed(p)``.

    Args:
        fixed, moving: ``(B, 1, H, W)`` RF frames, H >= 8.
        block_rows: rows per block (halved until at least three blocks fit).

    Returns:
        ``(B, 2, H, W)`` displacement, channel 0 lateral (zero), channel 1 axial.
    """
    if fixed.ndim != 4 or fixed.shape != moving.shape or fixed.shape[-2] < 8:
        raise InputError(
            f"expected two (B, 1, H, W) frames with H >= 8, got {tuple(fixed.shape)} and {tuple(moving.shape)}"
        )
    block = min(block_rows, fixed.shape[-2] // 2)
    centres, lags = _block_lags(fixed, moving, block)
    design = torch.stack([torch.ones_like(centres), centres], 1)  # (K, 2)
    weight = torch.ones_like(lags)
    for _ in range(3):
        line = torch.linalg.lstsq(design * weight[..., None], (lags * weight)[..., None]).solution[..., 0]  # (B, 2)
        error = (lags - line[:, :1] - line[:, 1:] * centres).abs()
        weight = (error <= (2 * error.median(1, keepdim=True).values).clamp(min=1.0)).to(lags)
    rows = torch.arange(fixed.shape[-2], device=fixed.device, dtype=fixed.dtype)
    axial = (line[:, :1] + line[:, 1:] * rows)[:, None, :, None].expand(-1, 1, -1, fixed.shape[-1])
    return torch.cat([torch.zeros_like(axial), axial], 1)


def compose_displacements(inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """``w(p) = inner(p) + outer(p + inner(p))``, all ``(B, 2, H, W)`` in pixels.

    With ``outer`` mapping frame a to b and ``inner`` mapping a to ``b`` warped back by ``outer``
    (the residual after pre-alignment), ``w`` maps a to b: ``b(p + w(p)) ~ a(p)``; with ``inner``
    from a to b and ``outer`` from b to c (on b's grid), ``w`` maps a to c.
    """
    return inner + warp_image(outer, inner)


def chained_prealignment(rf: torch.Tensor) -> torch.Tensor:
    """Pre-alignment of the pairs (0, k) of a sequence, composed from frame-to-frame fits.

    Args:
        rf: ``(N, 1, H, W)`` frames.

    Returns:
        ``(N-1, 2, H, W)``: entry k - 1 maps frame 0 to frame k (pixels).
    """
    chained = []
    for k in range(1, rf.shape[0]):
        step = linear_prealignment(rf[k - 1 : k], rf[k : k + 1])
        chained.append(step if not chained else compose_displacements(chained[-1], step))
    return torch.cat(chained)


def prealigned_previous(rf: np.ndarray) -> np.ndarray:
    """Each frame warped back onto its predecessor by :func:`linear_prealignment`: ``(N, H, W)`` -> ``(N-1, H, W)``."""
    frames = torch.from_numpy(rf)[:, None]
    return np.concatenate(
        [
            warp_image(frames[k : k + 1], linear_prealignment(frames[k - 1 : k], frames[k : k + 1]))[:, 0].numpy()
            for k in range(1, len(rf))
        ]
    )


@dataclass(frozen=True)
class RFSequence:
    """One RF sequence in memory.

    Attributes:
        rf: ``(N, H, W)`` float32 frames, already normalised.
        strain: ``(N-1, H, W)`` float32 true axial strain in % from frame 0 to frame k (index
            k - 1), or None for real data.
        name: where it came from (seed or file), for messages.
        aligned: ``(N-1, H, W)`` frame k warped onto frame k - 1 by :func:`linear_prealignment`
            (index k - 1, see :func:`prealigned_previous`), or None without pre-alignment.
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
