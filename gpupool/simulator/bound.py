"""The physical limit of a replay: an upper bound on the GPU allocation any placement could reach (docs/openb.md).

For one seed, the pods arrived by the time arrivals reach 100 % of GPU capacity are packed
offline, all at once, into the idle cluster under the replay's hard constraints (host CPU,
host memory, pod count, GPU model, GPUs per node). No placement, online or offline, allocates
more of them. The packing is relaxed to a linear programme (HiGHS, through SciPy), made small
by aggregating identical nodes into node types and identical pods into pod shapes:
x[s, t] = how many pods of shape s run on nodes of type t. Per node type the LP keeps

* the capacity of the type (CPU, host memory, pods, and GPU compute), and
* valid cuts from dual-feasible functions f (Σ sizes ≤ 1 in one bin ⇒ Σ f(size) ≤ 1): on each
  GPU (a slice larger than half a GPU shares it with nothing larger than the rest, …), and on
  each node's CPU and host memory (two pods of more than half a node's CPU never share it).

The LP optimum is therefore an upper bound (an LP relaxation of the exact packing, strengthened
by the cuts); it is not claimed to be reachable.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.simulator.trace import TraceNode, TracePod

#: pods per node in the replay (the node YAML's `pods: '1001'`)
MAX_PODS = 1001
#: ε of the Fekete–Schepers functions used as cuts on CPU and host memory (fractions of a node)
HOST_EPSILONS = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)
#: k of the Martello–Toth functions ⌊(k+1)x⌋ / k
MT_KS = (1, 2, 3, 4, 5)

Cut = Callable[[float], float]


@dataclass(frozen=True, slots=True)
class NodeType:
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


@dataclass(frozen=True, slots=True)
class PodShape:
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    compute: int  # per GPU, 1 % units
    models: frozenset[str]

    def fits(self, t: NodeType) -> bool:
        if self.cpu_milli > t.cpu_milli or self.memory_mib > t.memory_mib:
            return False
        if self.num_gpu == 0:
            return True
        return self.num_gpu <= t.gpus and (not self.models or t.model in self.models)


def arrived_at(order: Sequence[TracePod], capacity_milli: int, percent: int = 100) -> list[TracePod]:
    """The pods arrived at the discretisation point `percent` (docs/openb-benchmark.md §5): every event whose
    arrived share rounds (half up) to at most `percent`, or to `percent` + 1 when no event rounds to `percent`."""
    arrived = 0
    last_at_or_below = 0
    hit = False
    cut_next = len(order)
    for i, pod in enumerate(order):
        arrived += pod.gpu_request_milli
        x = math.floor(arrived * 100.0 / capacity_milli + 0.5)
        if x <= percent:
            last_at_or_below = i + 1
            hit = hit or x == percent
        elif x == percent + 1:
            cut_next = i + 1
        else:
            cut_next = min(cut_next, i)
            break
    return list(order[: last_at_or_below if hit else cut_next])


def fekete_schepers(eps: float) -> Cut:
    """U^ε: 1 above 1 − ε, x in between, 0 below ε (a dual-feasible function for ε ≤ 1/2)."""

    def f(x: float) -> float:
        if x > 1 - eps + 1e-12:
            return 1.0
        return x if x >= eps - 1e-12 else 0.0

    return f


def martello_toth(k: int) -> Cut:
    """u^(k): x when (k + 1) x is whole, else ⌊(k + 1) x⌋ / k (a dual-feasible function for k ≥ 1)."""

    def f(x: float) -> float:
        y = (k + 1) * x
        r = round(y)
        if abs(y - r) < 1e-9:
            return x
        return math.floor(y) / k

    return f


def _gpu_cuts(pods: Sequence[PodShape]) -> list[Cut]:
    sizes = sorted({p.compute / WHOLE_GPU_COMPUTE for p in pods if p.num_gpu and p.compute <= WHOLE_GPU_COMPUTE // 2})
    cuts: list[Cut] = [lambda x: x]
    cuts += [fekete_schepers(e) for e in sizes]
    cuts += [martello_toth(k) for k in MT_KS]
    return cuts


def _host_cuts() -> list[Cut]:
    return [fekete_schepers(e) for e in HOST_EPSILONS] + [martello_toth(k) for k in MT_KS]


def allocation_bound(nodes: Sequence[TraceNode], pods: Sequence[TracePod]) -> float:
    """Upper bound on the GPU allocation ratio (% of the cluster's GPU compute) of placing any subset of `pods`."""
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    types_count = Counter(NodeType(n.cpu_milli, n.memory_mib, n.gpus, n.model) for n in nodes)
    shapes_count = Counter(
        PodShape(p.cpu_milli, p.memory_mib, p.num_gpu, p.compute, p.models) for p in pods if p.num_gpu
    )  # CPU-only pods add no allocation: a packing may leave them out, so the bound may too
    capacity = sum(n.gpus for n in nodes) * WHOLE_GPU_COMPUTE
    if not capacity or not shapes_count:
        return 0.0
    types = [t for t in types_count if t.gpus]
    shapes = list(shapes_count)
    pairs = [(s, t) for s in range(len(shapes)) for t in range(len(types)) if shapes[s].fits(types[t])]
    if not pairs:
        return 0.0
    gpu_cuts = _gpu_cuts(shapes)
    host_cuts = _host_cuts()
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    bounds: list[float] = []
    row = 0
    # each shape at most as often as it arrived
    for v, (s, _) in enumerate(pairs):
        rows.append(s)
        cols.append(v)
        vals.append(1.0)
    bounds.extend(float(c) for c in shapes_count.values())
    row = len(shapes)
    by_type: dict[int, list[int]] = {}
    for v, (_, t) in enumerate(pairs):
        by_type.setdefault(t, []).append(v)
    for t, members in by_type.items():
        nt = types[t]
        n = types_count[nt]
        member_shapes = [shapes[pairs[v][0]] for v in members]
        coefficients: list[tuple[list[float], float]] = [
            ([float(p.cpu_milli) for p in member_shapes], float(n * nt.cpu_milli)),
            ([float(p.memory_mib) for p in member_shapes], float(n * nt.memory_mib)),
            ([1.0] * len(members), float(n * MAX_PODS)),
        ]
        for f in gpu_cuts:
            coefficients.append(([p.num_gpu * f(p.compute / WHOLE_GPU_COMPUTE) for p in member_shapes], n * nt.gpus))
        for f in host_cuts:
            coefficients.append(([f(p.cpu_milli / nt.cpu_milli) for p in member_shapes], float(n)))
            if nt.memory_mib:
                coefficients.append(([f(p.memory_mib / nt.memory_mib) for p in member_shapes], float(n)))
        for row_values, limit in coefficients:
            for v, a in zip(members, row_values, strict=True):
                if a:
                    rows.append(row)
                    cols.append(v)
                    vals.append(a)
            bounds.append(limit)
            row += 1
    matrix = coo_matrix((vals, (rows, cols)), shape=(row, len(pairs))).tocsr()
    gain = np.array([-float(shapes[s].num_gpu * shapes[s].compute) for s, _ in pairs])
    result = linprog(gain, A_ub=matrix, b_ub=np.array(bounds), bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the bound's LP did not solve: {result.message}")
    return float(-result.fun) * 100.0 / capacity
