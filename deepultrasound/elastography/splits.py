"""Seed ranges of the simulated elastography data: one place, so training never sees a test sequence.

``simulate_sequence(config, seed)`` is deterministic in its seed, so a seed names a sequence.
Training draws its sequences from :data:`TRAINING_SEEDS`, model selection from
:data:`VALIDATION_SEEDS`, and ``deepultrasound bench strain`` evaluates on :data:`BENCH_SEEDS`,
which nothing else may use. The ranges are disjoint and wide enough for any run here.
"""

from __future__ import annotations

from deepultrasound.errors import InputError

TRAINING_SEEDS = range(0, 1_000_000)
"""Seeds of training sequences."""
VALIDATION_SEEDS = range(1_000_000, 1_100_000)
"""Seeds of validation sequences (model selection, early stopping)."""
BENCH_SEEDS = range(9_000_000, 9_100_000)
"""Held-out seeds of the strain benchmark; reserved: no training or validation run may use them."""


def bench_seeds(count: int, start: int = BENCH_SEEDS.start) -> range:
    """``count`` consecutive bench seeds from ``start``.

    Raises:
        InputError: ``count`` < 1, or the seeds leave :data:`BENCH_SEEDS` (and could overlap
            the training or validation seeds).
    """
    if count < 1:
        raise InputError(f"the benchmark needs at least 1 sequence, got {count}")
    seeds = range(start, start + count)
    if seeds.start < BENCH_SEEDS.start or seeds.stop > BENCH_SEEDS.stop:
        raise InputError(
            f"bench seeds {seeds.start}..{seeds.stop - 1} leave the reserved range "
            f"{BENCH_SEEDS.start}..{BENCH_SEEDS.stop - 1}; choose --seed-start inside it"
        )
    return seeds
