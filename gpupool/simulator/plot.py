"""Allocation ratio vs arrived workload, one line per policy (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from gpupool.simulator.metrics import COLUMNS


def plot_allocation(curves: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """`curves`: policy -> mean allocation ratio % at arrived % 0..130."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot([0, 100], [0, 100], color="0.8", linestyle="--", linewidth=1, label="ideal")
    for policy, curve in curves.items():
        ax.plot(list(COLUMNS), list(curve), label=policy, linewidth=1.5)
    ax.axvline(100, color="0.6", linewidth=0.8)
    ax.set_xlim(0, 130)
    ax.set_ylim(0, 100)
    ax.set_xlabel("arrived GPU workload (% of cluster GPU capacity)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    inset = ax.inset_axes((0.08, 0.55, 0.35, 0.38))
    for curve in curves.values():
        inset.plot(list(COLUMNS[80:]), list(curve[80:]), linewidth=1.2)
    inset.set_title("80–130 %", fontsize=8)
    inset.tick_params(labelsize=7)
    inset.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timeline(times_s: Sequence[float], series: Mapping[str, Sequence[float]], pending: Sequence[int],
                  path: Path, title: str) -> None:  # fmt: skip
    """`gpupool simulate --timeline --plot`: `series` (name -> % of GPU compute) and pending pods over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [t / 3600.0 for t in times_s]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=110, sharex=True, height_ratios=(2, 1))
    for name, values in series.items():
        top.plot(hours, list(values), label=name, linewidth=1.2)
    top.set_ylim(0, 100)
    top.set_ylabel("% of GPU compute")
    top.set_title(title)
    top.grid(True, alpha=0.3)
    top.legend(loc="lower right")
    bottom.plot(hours, list(pending), color="tab:red", linewidth=1.0)
    bottom.set_ylabel("pods waiting")
    bottom.set_xlabel("hours since the start")
    bottom.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
