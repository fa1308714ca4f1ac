"""Issue 12: random interleavings of binds, filters, preempts and every watch event keep the ledger true.

`GPUPOOL_INTERLEAVINGS` (default below) seeded schedules of `GPUPOOL_INTERLEAVING_STEPS` steps each, from seed
`GPUPOOL_INTERLEAVING_FIRST`; `make fuzz` raises the count. A failure names its seed and prints its steps;
`GPUPOOL_INTERLEAVING_SEED=<n>` replays exactly that schedule. The harness is tests/extender/interleavings.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tests.extender.interleavings import run_seed

FIRST = int(os.environ.get("GPUPOOL_INTERLEAVING_FIRST", "0"))
COUNT = int(os.environ.get("GPUPOOL_INTERLEAVINGS", os.environ.get("GPUPOOL_INTERLEAVING_SEEDS", "300")))
STEPS = int(os.environ.get("GPUPOOL_INTERLEAVING_STEPS", "40"))


@pytest.fixture
def quiet() -> Iterator[None]:
    """The service logs every flap it sees; thousands of schedules would drown a failure's log."""
    logger = logging.getLogger("gpupool")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def test_random_interleavings_keep_the_ledger_a_recount_within_capacity(quiet: None) -> None:
    only = os.environ.get("GPUPOOL_INTERLEAVING_SEED")
    for seed in [int(only)] if only else range(FIRST, FIRST + COUNT):
        run_seed(seed, STEPS)
