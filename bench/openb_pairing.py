"""Near-perfect fit first: an fgdpp variant measured toward 96 on the default trace (docs/openb.md, "Toward 96").

fgdpp has since adopted `--avoid-dead` at t = c_min / 2 in a 0..100 form (`FGDPlusPlus.slice_key` / `slice_score`);
the variants here build on fgdpp with that off (`pairing=False`), so they reproduce the research figures, and
`--baseline` runs fgdpp as it is now.

A sharing pod that fits some partially used GPU leaving a remainder of at most `threshold` compute units (default:
half the smallest sharing share of the workload mix M) goes to such a GPU, the smallest remainder first, and only
then by fgdpp's score; every other pod, and every pod with no such GPU, is placed by fgdpp. The choice key is
lexicographic (near-perfect, 100 − remainder, fgdpp's score), encoded in one integer above 100 — outside the
0..100 score contract, so this lives here and not in `gpupool.policies` (`--encoding clip` keeps 0..100: a
near-perfect fit scores 100 − remainder and every other choice at most 100 − threshold − 1, with ties in the
remainder to the node order instead of fgdpp's score). `--avoid-dead` adds a tier below: a choice that leaves a
partially used GPU with a *dead* remainder (above the threshold, below the smallest sharing share: no task of M
fits it) comes after every other choice, a fully free GPU included.

Each run replays the published protocol (`gpupool.simulator.protocol`) up to arrived = 100.5 % and prints the
allocation at 100 % arrived as `gpupool simulate` discretises it (the mean over the pods with round(arrived) = 100).

    .venv/bin/python bench/openb_pairing.py --seeds 42,43,44                  # default trace, threshold M's c_min / 2
    .venv/bin/python bench/openb_pairing.py --pods ../shared/data/openb/openb_pod_list_gpushare40.csv --baseline
    .venv/bin/python bench/openb_pairing.py --avoid-dead --seeds 42,43,44,45,46,47,48,49,50,51
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.capacity import CapacityIndex
from gpupool.fragmentation import Floats, Ints, Workload
from gpupool.ledger import NodeView
from gpupool.policies.base import MAX_SCORE, Choice, Demand, slice_fits
from gpupool.policies.fgd import fgd_score
from gpupool.policies.fgdpp import FGDPlusPlus
from gpupool.pool import build_pool
from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.simulator.protocol import DEFAULT_TUNE, build_ledger, node_rank, pod_request, pool_config, shuffled_pods
from gpupool.simulator.report import default_data_dir
from gpupool.simulator.trace import TraceNode, TracePod, load_nodes, load_pods, target_workload, total_gpu_milli


def smallest_share(workload: Workload) -> int:
    """The smallest compute of a one-GPU sharing task in M (a remainder below it is of no use to M)."""
    return min(s.compute for s in workload.shapes if s.count == 1 and 0 < s.compute < WHOLE_GPU_COMPUTE)


class NearFitFirst(FGDPlusPlus):
    """fgdpp, but a sharing pod takes a partially used GPU it fills to within `threshold` units first."""

    def __init__(self, *args: object, threshold: int | None = None, clip: bool = False, avoid_dead: bool = False,
                 **kwargs: object) -> None:  # fmt: skip
        kwargs.setdefault("pairing", False)  # fgdpp's own bands (adopted from this) off: the variants stand alone
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.smallest = smallest_share(self.workload)
        self.threshold = self.smallest // 2 if threshold is None else threshold
        self.clip = clip
        self.avoid_dead = avoid_dead

    def evaluate_rows(self, index: CapacityIndex, rows: list[int], demand: Demand) -> list[Choice | None] | None:
        return None  # state by state: the array form has no near-fit key

    def _key(self, score: int, remainder: int | None, node: bool, dead: bool = False) -> int:
        """(near-perfect, 100 − remainder, not dead, score) as one integer; `remainder` None = not a near-perfect
        fit; `dead`: leaves a remainder no task of M fits (counted only with `avoid_dead`)."""
        if dead and self.avoid_dead:
            return score - 200
        if self.clip and node:
            return 100 - remainder if remainder is not None else min(score, 100 - self.threshold - 1)
        return score if remainder is None else (1000 + WHOLE_GPU_COMPUTE - remainder) * 1000 + score

    def _evaluate(self, view: NodeView, demand: Demand) -> Choice | None:
        group = demand.groups[0] if len(demand.groups) == 1 else None
        if group is None or group.count != 1 or group.compute >= WHOLE_GPU_COMPUTE:
            return super()._evaluate(view, demand)
        cpu1 = None if view.cpu_free is None else view.cpu_free - demand.cpu_milli
        mem1 = None if view.memory_free is None else view.memory_free - demand.memory_mib
        fc, fm, tm = list(view.free_compute), list(view.free_memory), view.total_memory
        f0 = self.fragment(view.cpu_free, fc, view.model, view.memory_free, (fm, tm))
        best: tuple[int, int, float, int | None, bool] | None = None
        seen: set[tuple[int, int, int]] = set()
        for j in range(len(fc)):
            sig = (fc[j], fm[j], tm[j])
            if sig in seen or not slice_fits(fc[j], fm[j], tm[j], group):
                continue
            seen.add(sig)
            taken = tm[j] if group.memory_mib is None else group.memory_mib
            left = fc[j] - group.compute
            near = left if fc[j] < WHOLE_GPU_COMPUTE and left <= self.threshold else None
            dead = fc[j] < WHOLE_GPU_COMPUTE and self.threshold < left < self.smallest
            fc[j] -= group.compute
            fm[j] -= taken
            f1 = self.fragment(cpu1, fc, view.model, mem1, (fm, tm))
            fc[j] += group.compute
            fm[j] += taken
            value = self._key(fgd_score(f0 - f1), near, False, dead)
            if best is None or value > best[0]:
                best = (value, j, f1, near, dead)
        if best is None:
            return None
        _, j, f1, near, dead = best
        score = fgd_score(f0 - f1 - self.reservation(view.model, demand))
        return Choice(self._key(score, near, True, dead), ((j,),))


class Banded(FGDPlusPlus):
    """fgdpp (pairing bands adopted) with one change, for the attempts toward 96 after the adoption
    (docs/openb.md "Pairing"): `bands` (t, c_min) instead of M's own; `most_used`: among near fits of equal
    remainder the node with the least free compute after the pod first (a key above 0..100: an experiment);
    `dead`: "last" (fgdpp's), "intra", "charged" or "nonear" (`slice_score`). Scalar forms only where they differ."""

    def __init__(self, *args: object, bands: tuple[int, int] | None = None, most_used: bool = False,
                 dead: str = "last", **kwargs: object) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if bands is not None:
            self.bands = bands
        self.most_used = most_used
        self.dead = dead
        self._charged = False

    def slice_key(self, value: float, free: int, compute: int, spare: float, offset: float) -> float:
        """`dead` "charged": no bands inside a node whose model the pod pays a reservation for."""
        if self.dead == "charged" and self._charged:
            return value
        if self.dead == "nonear" and self._charged and self.bands is not None and self._near(free, compute):
            return value
        return super().slice_key(value, free, compute, spare, offset)

    def _near(self, free: int, compute: int) -> bool:
        return self.bands is not None and free < WHOLE_GPU_COMPUTE and free - compute <= self.bands[0]

    def slice_score(self, score: int, free: int, compute: int, spare: float, offset: float) -> int:
        """`dead` "intra": a dead remainder is last inside the node only; the node scores as an ordinary choice.
        `dead` "charged": a node whose model the pod pays a reservation for scores in the bottom band with the
        dead remainders (fgdpp's score scaled into [0, t])."""
        if self.dead == "charged" and self._charged and self.bands is not None:
            return score * (self.bands[0] + 1) // (MAX_SCORE + 1)
        if self.dead == "nonear" and self._charged and self.bands is not None and self._near(free, compute):
            return min(max(score, self.bands[0] + 1), MAX_SCORE - self.bands[0] - 1)
        if self.dead == "intra" and self.bands is not None and free < WHOLE_GPU_COMPUTE:
            near, smallest = self.bands
            if near < free - compute < smallest:
                return min(max(score, near + 1), MAX_SCORE - near - 1)
        return super().slice_score(score, free, compute, spare, offset)

    def slice_scores(self, scores: Ints, free: Ints, compute: int, spare: Floats, offset: float) -> Ints:
        out = super().slice_scores(scores, free, compute, spare, offset)
        if self.dead == "intra" and self.bands is not None:
            near, smallest = self.bands
            left = free - compute
            dead = (free < WHOLE_GPU_COMPUTE) & (left > near) & (left < smallest)
            out = np.where(dead, np.clip(scores, near + 1, MAX_SCORE - near - 1), out)
        return out

    def evaluate_rows(self, index: CapacityIndex, rows: list[int], demand: Demand) -> list[Choice | None] | None:
        if self.most_used or self.dead in ("charged", "nonear"):
            return None
        return super().evaluate_rows(index, rows, demand)

    def _evaluate(self, view: NodeView, demand: Demand) -> Choice | None:
        self._charged = self.reservation(view.model, demand) > 0
        choice = super()._evaluate(view, demand)
        if not self.most_used or choice is None or self.bands is None or choice.score < MAX_SCORE - self.bands[0]:
            return choice
        if len(demand.groups) != 1 or demand.groups[0].count != 1 or demand.groups[0].compute >= WHOLE_GPU_COMPUTE:
            return choice
        idle = sum(view.free_compute) - demand.groups[0].compute
        return Choice(choice.score * 10_000 + 10_000 - 1 - idle, choice.picks)


def alloc_at_100(
    nodes: list[TraceNode], pods: list[TracePod], seed: int, variant: tuple[int | None, bool, bool] | None,
    banded: dict[str, object] | None = None,
) -> float:  # fmt: skip
    """One replay of fgdpp (`variant` None), `NearFitFirst` with (threshold, clip, avoid_dead), or `Banded` with
    `banded` as its options: allocation % at 100 % arrived."""
    rng = random.Random(seed)
    capacity_milli = total_gpu_milli(nodes)
    order = shuffled_pods(pods, rng, capacity_milli, DEFAULT_TUNE)
    rank = node_rank(nodes, rng)
    workload, reservation = target_workload(pods), target_workload(pods, 1.0)
    pool = build_pool(pool_config("fgdpp", seed, workload, reservation_workload=reservation), rank=rank.__getitem__)
    if banded is not None:
        pool.placer.policies["fgdpp"] = Banded(workload, reservation_workload=reservation, **banded)
    elif variant is not None:
        pool.placer.policies["fgdpp"] = NearFitFirst(
            workload, reservation_workload=reservation, threshold=variant[0], clip=variant[1], avoid_dead=variant[2]
        )
    ledger, placer = build_ledger(nodes, pool.ledger), pool.placer
    engine = pool.placer.policies["fgdpp"]
    capacity_units = sum(n.gpus for n in nodes) * WHOLE_GPU_COMPUTE
    arrived = allocated = 0
    at_100: list[float] = []
    for pod in order:
        arrived += pod.gpu_request_milli
        request = pod_request(pod)
        plan = placer.best(request)
        if plan is not None:
            ledger.commit(pod.name, plan.node, plan.slices, cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib)
            engine.placed(plan.node, Demand.of(request))
            allocated += pod.num_gpu * pod.compute
        share = 100.0 * arrived / capacity_milli
        if math.floor(share + 0.5) == 100:
            at_100.append(100.0 * allocated / capacity_units)
        elif share >= 100.5:
            break
    return sum(at_100) / len(at_100)


def main(argv: list[str] | None = None) -> int:
    data = default_data_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, default=data / "openb_pod_list_default.csv")
    parser.add_argument("--nodes", type=Path, default=data / "openb_node_list_gpu_node.csv")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated replay seeds")
    parser.add_argument("--threshold", type=int, default=None, help="near-perfect remainder, units (default c_min / 2)")
    parser.add_argument("--encoding", choices=("lex", "clip"), default="lex")
    parser.add_argument("--avoid-dead", action="store_true", help="dead remainders after every other choice")
    parser.add_argument("--baseline", action="store_true", help="also run fgdpp itself on each seed")
    parser.add_argument("--bands", default=None, help="T,CMIN: fgdpp with these pairing bands (Banded)")
    parser.add_argument("--most-used", action="store_true", help="fgdpp, near-fit ties to the most used node")
    parser.add_argument(
        "--dead", choices=("last", "intra", "charged", "nonear"), default="last", help="fgdpp: where dead remainders go"
    )
    args = parser.parse_args(argv)

    nodes, pods = load_nodes(args.nodes), load_pods(args.pods)
    variant = (args.threshold, args.encoding == "clip", bool(args.avoid_dead))
    banded: dict[str, object] | None = None
    if args.bands is not None or args.most_used or args.dead != "last":
        bands = None if args.bands is None else tuple(int(v) for v in args.bands.split(","))
        banded = {"bands": bands, "most_used": bool(args.most_used), "dead": args.dead}
    runs: list[tuple[str, tuple[int | None, bool, bool] | None, dict[str, object] | None]] = [
        ("banded", None, banded) if banded is not None else ("near-fit", variant, None)
    ]
    if args.baseline:
        runs.insert(0, ("fgdpp", None, None))
    for seed in (int(s) for s in args.seeds.split(",")):
        for label, spec, options in runs:
            started = time.process_time()
            alloc = alloc_at_100(nodes, pods, seed, spec, options)
            print(f"{args.pods.name} {label} seed {seed}: {alloc:.2f} % at 100 % arrived "
                  f"({time.process_time() - started:.1f} CPU s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
