"""Per-run metrics discretised per integer arrived % (docs/openb-benchmark.md §5), and their summaries."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: the discretisation columns 0..130 of the authors' `analysis_*_discrete.csv`
COLUMNS = tuple(range(131))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def discretise(arrived: Sequence[float], metric: Sequence[float], columns: Sequence[int] = COLUMNS) -> list[float]:
    """For each integer x: the mean metric over events with round(arrived) = x; else the neighbours x ± 1;
    else (before the first or after the last event) the nearest column that has a value."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for a, m in zip(arrived, metric, strict=True):
        x = _round_half_up(a)
        sums[x] = sums.get(x, 0.0) + m
        counts[x] = counts.get(x, 0) + 1
    out: list[float | None] = []
    for x in columns:
        if x in counts:
            out.append(sums[x] / counts[x])
            continue
        n = counts.get(x - 1, 0) + counts.get(x + 1, 0)
        if n:
            out.append((sums.get(x - 1, 0.0) + sums.get(x + 1, 0.0)) / n)
        else:
            out.append(None)
    known = [i for i, v in enumerate(out) if v is not None]
    if not known:
        return [math.nan] * len(out)
    filled: list[float] = []
    for i, v in enumerate(out):
        if v is None:
            j = min(known, key=lambda k: (abs(k - i), k))
            v = out[j]
        assert v is not None
        filled.append(v)
    return filled


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)
