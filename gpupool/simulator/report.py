"""Summaries of openb runs: per-policy statistics, the authors' reference numbers, tables, JSON and CSV."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpupool.simulator.metrics import COLUMNS, discretise, mean_sd
from gpupool.simulator.protocol import RunResult
from gpupool.simulator.trace import KINDS

#: gpupool policy name -> the authors' `sc_policy`
PAPER_POLICY = {
    "random": "01-Random",
    "dotprod": "02-DotProd",
    "clustering": "03-GpuClustering",
    "packing": "04-GpuPacking",
    "bestfit": "05-BestFit",
    "fgd": "06-FGD",
}
METRIC_FILES = {
    "alloc": "analysis_allo_discrete.csv",
    "frag": "analysis_frag_discrete.csv",
    "frag_rate": "analysis_frag_ratio_discrete.csv",
}


@dataclass
class RunSummary:
    """One run, discretised (§5): the three metrics at arrived % = 0..130."""

    trace: str
    policy: str
    seed: int
    pods: int
    alloc: list[float]
    frag: list[float]
    frag_rate: list[float]
    failed: dict[str, int]
    arrived_by_kind: dict[str, int]
    seconds: float
    tune: float = 1.3
    total_gpus: int = 0
    cpu_seconds: float = 0.0
    #: the seed's physical limit at 100 % arrived (`gpupool.simulator.bound`), None when not computed
    bound_at_100: float | None = None

    @staticmethod
    def of(result: RunResult, tune: float, total_gpus: int) -> RunSummary:
        return RunSummary(
            trace=result.trace, policy=result.policy, seed=result.seed, pods=result.pods,
            alloc=discretise(result.arrived, result.allocated),
            frag=discretise(result.arrived, result.frag_amount),
            frag_rate=discretise(result.arrived, result.frag_rate),
            failed=dict(result.failed), arrived_by_kind=dict(result.arrived_by_kind),
            seconds=result.seconds, tune=tune, total_gpus=total_gpus, cpu_seconds=result.cpu_seconds,
        )  # fmt: skip


@dataclass
class Reference:
    """The authors' per-seed discretised metrics for one (trace, policy)."""

    alloc: list[list[float]] = field(default_factory=list)
    frag: list[list[float]] = field(default_factory=list)
    frag_rate: list[list[float]] = field(default_factory=list)

    def at(self, metric: str, x: int) -> tuple[float, float]:
        rows: list[list[float]] = getattr(self, metric)
        return mean_sd([r[x] for r in rows]) if rows else (math.nan, math.nan)


def trace_name(pods_path: Path | str) -> str:
    return Path(pods_path).stem


def default_data_dir(repo_root: Path | None = None) -> Path:
    """`$GPUPOOL_OPENB_DIR`, else `../shared/data/openb` relative to the repository root."""
    env = os.environ.get("GPUPOOL_OPENB_DIR")
    if env:
        return Path(env)
    root = repo_root if repo_root is not None else Path(__file__).resolve().parents[2]
    return root.parent / "shared" / "data" / "openb"


def load_reference(expected_dir: Path, trace: str, policy: str) -> Reference | None:
    """The authors' rows for `trace` (pod file stem) and `policy`, or None if they never ran it."""
    sc_policy = PAPER_POLICY.get(policy)
    if sc_policy is None or not expected_dir.is_dir():
        return None
    ref = Reference()
    for metric, filename in METRIC_FILES.items():
        path = expected_dir / filename
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("workload") == trace and row.get("sc_policy") == sc_policy:
                    getattr(ref, metric).append([float(row[str(x)]) for x in COLUMNS])
    return ref if ref.alloc else None


def summarise(runs: Sequence[RunSummary], reference: Reference | None) -> dict[str, Any]:
    """JSON-ready statistics of one policy's runs (means over seeds, percent)."""
    out: dict[str, Any] = {}
    for name, metric, x in (
        ("alloc_at_100", "alloc", 100), ("alloc_at_130", "alloc", 130),
        ("frag_rate_at_60", "frag_rate", 60), ("frag_rate_at_80", "frag_rate", 80),
        ("frag_rate_at_90", "frag_rate", 90), ("frag_amount_at_90", "frag", 90),
    ):  # fmt: skip
        mean, sd = mean_sd([getattr(r, metric)[x] for r in runs])
        out[name] = round(mean, 4)
        out[f"{name}_sd"] = round(sd, 4)
        if reference is not None:
            ref_mean, ref_sd = reference.at(metric, x)
            out.setdefault("paper", {})[name] = round(ref_mean, 4)
            out["paper"][f"{name}_sd"] = round(ref_sd, 4)
    bounds = [r.bound_at_100 for r in runs if r.bound_at_100 is not None]
    if bounds and len(bounds) == len(runs):
        out["bound_at_100"] = round(mean_sd(bounds)[0], 4)
        out["bound_at_100_per_seed"] = [round(b, 4) for b in bounds]
    out["seconds_per_run"] = round(sum(r.seconds for r in runs) / len(runs), 2)
    out["cpu_seconds_per_run"] = round(sum(r.cpu_seconds for r in runs) / len(runs), 2)
    out["failed_per_run"] = {k: round(sum(r.failed[k] for r in runs) / len(runs), 1) for k in KINDS}
    out["pods_per_run"] = round(sum(r.pods for r in runs) / len(runs), 1)
    out["seeds"] = [r.seed for r in runs]
    out["alloc_at_100_per_seed"] = [round(r.alloc[100], 4) for r in runs]
    out["trace"] = runs[0].trace if runs else ""
    out["curve_alloc_mean"] = [round(mean_sd([r.alloc[x] for r in runs])[0], 4) for x in COLUMNS]
    return out


def recovered(alloc: float, bestfit: float, bound: float) -> float | None:
    """The share of the avoidable loss a policy recovers: (alloc − bestfit) / (bound − bestfit)."""
    if math.isnan(alloc) or math.isnan(bestfit) or bound - bestfit <= 1e-9:
        return None
    return round((alloc - bestfit) / (bound - bestfit), 4)


def add_recovered(stats: dict[str, dict[str, Any]], paper_bestfit: Reference | None) -> None:
    """Add `recovered` to every policy with a bound, against gpupool's own bestfit when it ran (else the
    paper's BestFit), and the paper's own share next to its numbers."""
    own = stats.get("bestfit", {}).get("alloc_at_100")
    paper = paper_bestfit.at("alloc", 100)[0] if paper_bestfit is not None else math.nan
    for s in stats.values():
        bound = s.get("bound_at_100")
        if bound is None:
            continue
        if own is not None:
            s["recovered"], s["recovered_against"] = recovered(s["alloc_at_100"], own, bound), "bestfit"
        else:
            s["recovered"], s["recovered_against"] = recovered(s["alloc_at_100"], paper, bound), "paper bestfit"
        if "paper" in s:
            s["paper"]["recovered"] = recovered(s["paper"]["alloc_at_100"], paper, bound)


def write_csv(directory: Path, runs: Iterable[RunSummary]) -> list[Path]:
    """Per-run rows in the authors' `expected/` format, one file per metric."""
    directory.mkdir(parents=True, exist_ok=True)
    runs = list(runs)
    paths: list[Path] = []
    for metric, filename in METRIC_FILES.items():
        path = directory / filename
        header = ["workload", "sc_policy", "tune", "seed"]
        if metric == "alloc":
            header.append("total_gpus")
        header += [str(x) for x in COLUMNS]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for r in runs:
                row: list[object] = [r.trace, PAPER_POLICY.get(r.policy, r.policy), r.tune, r.seed]
                if metric == "alloc":
                    row.append(r.total_gpus)
                row += [f"{v:.4f}" for v in getattr(r, metric)]
                writer.writerow(row)
        paths.append(path)
    return paths


def fmt(mean: float, sd: float | None = None) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"
