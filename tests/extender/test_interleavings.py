"""Issue 12: random interleavings of binds, filters and every watch event keep the invariants.

`GPUPOOL_INTERLEAVING_SEEDS` (default 300, from `GPUPOOL_INTERLEAVING_FIRST`) seeded schedules of
`GPUPOOL_INTERLEAVING_STEPS` (60) steps each; a failure names its seed and the last steps, and
`GPUPOOL_INTERLEAVING_SEED=<n>` replays exactly that one.
"""

from __future__ import annotations

import os

from tests.extender.interleavings import run_seed

FIRST = int(os.environ.get("GPUPOOL_INTERLEAVING_FIRST", "0"))
SEEDS = int(os.environ.get("GPUPOOL_INTERLEAVING_SEEDS", "300"))
STEPS = int(os.environ.get("GPUPOOL_INTERLEAVING_STEPS", "60"))


def test_random_interleavings_keep_the_ledger_true_and_within_capacity() -> None:
    only = os.environ.get("GPUPOOL_INTERLEAVING_SEED")
    for seed in [int(only)] if only else range(FIRST, FIRST + SEEDS):
        run_seed(seed, STEPS)
