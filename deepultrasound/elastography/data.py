"""Training data of the DeepUSE task: RF sequences (simulated with truth, or real) and random crops.

Simulated sequences are named by their seed (see :mod:`deepultrasound.elastography.splits`) and
take seconds each to make (about 10 s for 2000 x 128 x 6 frames), so they are cached on disk, one
``.npz`` per (simulation config, seed), written atomically: a run killed while simulating leaves
no half-written file, and several processes may fill the same cache. :func:`prepare_simulated`
fills a cache ahead of training (with a progress bar); the datasets call it on the seeds they use.

Real sequences (e.g. the in vivo forearm data) are read with :func:`deepultrasound.io.read_sequence`;
their truth is unknown, so they only serve unsupervised training.

Every frame is normalised on its whole extent with the bundle's normalisation
(:func:`~deepultrasound.elastography.frames.normalise_frame`) before any crop, exactly as
inference does on full frames.

With pre-alignment (:mod:`deepultrasound.elastography.prealign`), each sequence also holds its
frames warped onto their predecessors (:attr:`RFSequence.aligned`), cropped with the RF.

Simulated sequences know their displacement, which makes supervised *refinement pairs*
(:func:`refinement_pair`): the pairs that
:func:`~deepultrasound.elastography.prealign.refined_against_reference` gives the network at
inference, with the true residual.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deepultrasound.elastography.frames import normalise_frame
from deepultrasound.elastography.strain import window_samples
from deepultrasound.errors import ConfigError, FileFormatError
from deepultrasound.io.atomic import atomic_write
from deepultrasound.simulation import SimulationConfig, simulate_sequence
from deepultrasound.spatial import warp_image

CACHE_VERSION = 2
"""Bumped when the cached content changes; part of every cache file name."""


@dataclass(frozen=True)
class RFSequence:
    """One RF sequence in memory.

    Attributes:
        rf: ``(N, H, W)`` float32 frames, already normalised.
        strain: ``(N-1, H, W)`` float32 true axial strain in % from frame 0 to frame k (index
            k - 1), or None for real data.
        name: where it came from (seed or file), for messages.
        displacement: ``(N-1, 2, H, W)`` float32 true displacement in pixels from frame 0 to frame
            k (index k - 1) on the frame-0 grid, channel 0 lateral, 1 axial, or None for real data.
        aligned: ``(N-1, H, W)`` frame k warped onto frame k - 1 (index k - 1, see
            :func:`~deepultrasound.elastography.prealign.prealigned_previous`), or None without
            pre-alignment.
    """

    rf: np.ndarray
    strain: np.ndarray | None
    name: str
    displacement: np.ndarray | None = None
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
    per frame, as simulated), ``strain`` ``(N-1, H, W)`` float32 in % and ``displacement``
    ``(N-1, 2, H, W)`` float32 in pixels (channel 0 lateral, 1 axial), both frame 0 -> k.
    """
    paths = [cache_path(cache_dir, config, seed) for seed in seeds]
    missing = [(seed, path) for seed, path in zip(seeds, paths) if not path.is_file()]
    for seed, path in tqdm(missing, desc="simulating sequences", unit="sequence", disable=not progress or not missing):
        sequence = simulate_sequence(config, seed)
        with atomic_write(path) as staged, open(staged, "wb") as stream:
            np.savez(stream, rf=sequence.rf, strain=sequence.strain_percent, displacement=sequence.displacement_px)
    return paths


def load_simulated(path: Path, normalisation: str) -> RFSequence:
    """Read a cache file written by :func:`prepare_simulated`; frames normalised with ``normalisation``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            rf, strain, displacement = data["rf"], data["strain"], data["displacement"]
    except (OSError, ValueError, KeyError) as error:
        raise FileFormatError(
            f"cannot read the cached sequence {path} ({error}); delete it to simulate it again"
        ) from None
    frames = np.stack([normalise_frame(frame, normalisation) for frame in rf])
    return RFSequence(frames, strain, path.name, displacement)


def load_real(path: str | os.PathLike[str], normalisation: str) -> RFSequence:
    """Read a real RF sequence file ``(frames, rows, cols)``; frames normalised with ``normalisation``."""
    from deepultrasound.elastography.frames import prepare_rf
    from deepultrasound.io import read_sequence

    rf = prepare_rf(read_sequence(path, min_frames=2, require_finite=True).array)
    return RFSequence(np.stack([normalise_frame(frame, normalisation) for frame in rf]), None, Path(path).name)


REFINEMENT_KNOT_SPACING = (((256, 1024), (16, 48)), ((64, 512), (8, 32)))
"""Ranges of the knot spacing ((rows), (lines)) of :func:`smooth_random_field` in refinement pairs,
lateral channel then axial. The chained estimate's error on validation sequences has
autocorrelation half-widths of 500 to 640 rows and about 20 lines laterally, 60 to 240 rows and 6
to 13 lines axially."""

RESIDUAL_TOLERANCE_PX = 1e-3
"""Largest change of the last fixed-point step of :func:`refinement_pair`'s residual."""


def smooth_random_field(
    shape: tuple[int, int], knot_spacing: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """A ``(H, W)`` field of unit RMS: Gaussian knots ``knot_spacing`` (rows, lines) apart, bicubic between."""
    knots = torch.randn(1, 1, shape[0] // knot_spacing[0] + 2, shape[1] // knot_spacing[1] + 2, generator=generator)
    field = F.interpolate(knots, size=shape, mode="bicubic", align_corners=True)[0, 0]
    return field / field.square().mean().sqrt()


def refinement_pair(
    frame: torch.Tensor, displacement: torch.Tensor, error_px: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A refinement pair's moving frame and its true residual.

    At inference frame k is warped back onto the reference by the chained estimate, and the
    network estimates what is left (:func:`~deepultrasound.elastography.prealign.refined_against_reference`).
    Here frame k is warped by its true displacement plus a smooth random error ``e`` standing in
    for the chain's (one :func:`smooth_random_field` per channel, knot spacings drawn from
    :data:`REFINEMENT_KNOT_SPACING`). The residual ``r`` then solves
    ``r(p) + (d + e)(p + r(p)) = d(p)``, by fixed-point steps from ``-e`` until they change it by
    less than :data:`RESIDUAL_TOLERANCE_PX` (the map contracts by the gradient of ``d + e``, a
    few %; at most 20 steps).

    Args:
        frame: ``(H, W)`` RF frame k.
        displacement: ``(2, H, W)`` true displacement reference -> k in pixels (channel 0 lateral, 1 axial).
        error_px: RMS of ``e`` (lateral, axial) in pixels.
        generator: the source of randomness.

    Returns:
        ``(H, W)`` frame k warped back by ``d + e``, and the ``(2, H, W)`` residual in pixels.
    """
    shape = tuple(frame.shape)

    def spacing(low_high: tuple[int, int]) -> int:
        return int(torch.randint(low_high[0], low_high[1] + 1, (), generator=generator))

    error = torch.stack(
        [
            rms * smooth_random_field(shape, (spacing(rows), spacing(lines)), generator)
            for rms, (rows, lines) in zip(error_px, REFINEMENT_KNOT_SPACING)
        ]
    )
    start = (displacement + error)[None]
    moving = warp_image(frame[None, None], start)[0, 0]
    residual = -error[None]
    for _ in range(20):
        previous, residual = residual, displacement[None] - warp_image(start, residual)
        if (residual - previous).abs().max() < RESIDUAL_TOLERANCE_PX:
            break
    return moving, residual[0]


class SequenceCrops(Dataset):
    """Random crops of RF sub-sequences for training: sample ``i`` depends only on (seed, i).

    Sample ``i`` picks a sequence, ``length`` consecutive frames starting at a random frame, a
    random ``patch`` (rows, lines) crop and, with ``flip_lateral``, a random left-right flip (a
    mirrored probe sees mirrored tissue under the same axial compression). The first frame of
    the sub-sequence is the fixed frame of every pair.

    Items: ``{"rf": (length, rows, lines) float32}``, plus ``"aligned": (length-1, rows, lines)``
    (the same crop of :attr:`RFSequence.aligned`) when every sequence has it. With
    ``refinement_error_px``, each item also holds a :func:`refinement_pair` of a sequence with
    truth (its frame 0 and a random frame k, its own random crop): ``"refinement_fixed"`` and
    ``"refinement_moving"`` ``(rows, lines)``, ``"refinement_residual"`` ``(2, rows, lines)`` px.
    The error's RMS is ``k`` times a uniform draw in ``[0, refinement_error_px]`` per channel:
    the chain's error grows with each step.

    Args:
        sequences: the sources (any mix of simulated and real).
        length: frames per sample, >= 2.
        patch: (rows, lines) of the crop.
        samples: the dataset length (crops per epoch).
        seed: the task seed.
        flip_lateral: mirror half of the samples left-right.
        refinement_error_px: (lateral, axial) largest RMS error per frame step of the refinement
            pairs, in pixels; None: no refinement pairs.
    """

    def __init__(
        self,
        sequences: Sequence[RFSequence],
        length: int,
        patch: tuple[int, int],
        samples: int,
        seed: int,
        flip_lateral: bool = True,
        refinement_error_px: tuple[float, float] | None = None,
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
        self.with_truth = [sequence for sequence in self.sequences if sequence.displacement is not None]
        if refinement_error_px is not None and not self.with_truth:
            raise ConfigError("refinement pairs need simulated sequences (with their displacement); none was given")
        self.length = length
        self.patch = patch
        self.samples = samples
        self.seed = seed
        self.flip_lateral = flip_lateral
        self.refinement_error_px = refinement_error_px

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
        tensors = {key: torch.from_numpy(value.copy()) for key, value in item.items()}
        if self.refinement_error_px is not None:
            tensors.update(self._refinement_item(draw, generator))
        if flip:
            tensors = {key: value.flip(-1).contiguous() for key, value in tensors.items()}
            if "refinement_residual" in tensors:
                tensors["refinement_residual"][0].neg_()  # a mirrored lateral axis
        return tensors

    def _refinement_item(self, draw: Callable[[int], int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The ``refinement_*`` entries of an item (see the class docstring)."""
        sequence = self.with_truth[draw(len(self.with_truth))]
        frames, rows, lines = sequence.rf.shape
        k = 1 + draw(frames - 1)
        error_px = tuple(k * bound * float(torch.rand((), generator=generator)) for bound in self.refinement_error_px)
        moving, residual = refinement_pair(
            torch.from_numpy(sequence.rf[k]), torch.from_numpy(sequence.displacement[k - 1]), error_px, generator
        )
        top, left = draw(rows - self.patch[0] + 1), draw(lines - self.patch[1] + 1)
        window = (slice(top, top + self.patch[0]), slice(left, left + self.patch[1]))
        return {
            "refinement_fixed": torch.from_numpy(sequence.rf[0, window[0], window[1]].copy()),
            "refinement_moving": moving[window].contiguous(),
            "refinement_residual": residual[:, window[0], window[1]].contiguous(),
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
