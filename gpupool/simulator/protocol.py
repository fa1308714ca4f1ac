"""The openb replay protocol (docs/openb-benchmark.md §4), placing through the shared engine.

One run = (trace, policy, seed):

1. the cluster's nodes, idle, as a `gpupool.ledger.Ledger` (host CPU, host memory, 1001 pods);
2. the target workload M from the original pods;
3. `random.Random(seed)`: sort the pods by name, shuffle;
4. inflate to `tune` × GPU capacity by appending copies drawn with replacement (stop test
   uses the drawn pod's per-GPU milli, the authors' quirk);
5. a seeded random node order is the tie-break rank;
6. replay one pod at a time through `gpupool.placement.Placer.best` + `Ledger.commit`;
   no departures, no retries; a pod that fits nowhere is failed and dropped.

GPU memory is not in the published trace: every GPU has 100 MiB and every slice asks 1 MiB
per compute unit (memory ∝ compute), so memory never constrains and node views stay
identical for identical compute states. A memory-annotated variant (`gpu_memory_mib` on
nodes and sharing pods, `bench/openb_variants.py --memory`) gives GPUs their memory and
sharing slices theirs; whole GPUs then take a GPU's whole memory.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpupool.fragmentation import Workload
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger, NodeView
from gpupool.policies.base import Demand
from gpupool.pool import PoolConfig, build_pool
from gpupool.request import WHOLE_GPU_COMPUTE, ContainerRequest, PodRequest
from gpupool.simulator.trace import KINDS, MILLI, TraceNode, TracePod, target_workload, total_gpu_milli

#: pods per node (the node YAML's `pods: '1001'`)
MAX_PODS = 1001
#: GPU memory in MiB of every simulated GPU; slices ask 1 MiB per compute unit
GPU_MEMORY_MIB = WHOLE_GPU_COMPUTE
#: the paper's inflation factor
DEFAULT_TUNE = 1.3


def shuffled_pods(pods: list[TracePod], rng: random.Random, capacity_milli: int, tune: float) -> list[TracePod]:
    """Steps 3–4: sort by name, shuffle, then append copies until `tune` × capacity (or remove pods above it)."""
    order = sorted(pods, key=lambda p: p.name)
    rng.shuffle(order)
    target = tune * capacity_milli
    total = sum(p.gpu_request_milli for p in pods)
    if tune <= 0 or total == target or not any(p.gpu_milli for p in pods):
        return order  # (a trace without GPU pods cannot be inflated: every copy would add nothing)
    if total > target:
        while total > target and order:
            victim = order.pop(rng.randrange(len(order)))
            total -= victim.gpu_request_milli
        return order
    i = 0
    while True:
        pod = pods[rng.randrange(len(pods))]
        if total + pod.gpu_milli > target:  # the quirk: per-GPU milli in the stop test
            break
        total += pod.gpu_request_milli
        order.append(pod.renamed(f"{pod.name}-tuned-{i}"))
        i += 1
    return order


def node_rank(nodes: list[TraceNode], rng: random.Random) -> dict[str, int]:
    """Step 5: a random permutation of the nodes; the prefix is the tie-break rank."""
    perm = list(range(len(nodes)))
    rng.shuffle(perm)
    return {n.name: perm[i] for i, n in enumerate(nodes)}


def pool_config(
    policy: str, seed: int, workload: Workload, reserved: dict[str, float] | None = None,
    reservation_workload: Workload | None = None,
) -> PoolConfig:  # fmt: skip
    """The replay's pool: one policy, the run's seed and workload, and what fgdpp reserves GPU models for (the
    trace's every task shape, as the live settings pass every row of the workload CSV; `reserved` fixes the
    shares instead); the smallest slice is 1 unit."""
    return PoolConfig(slots_per_gpu=WHOLE_GPU_COMPUTE, policies=(policy,), default_policy=policy,
                      workload=workload, seed=seed, simulator=True,
                      reserved=tuple(sorted((reserved or {}).items())),
                      reservation_workload=reservation_workload)  # fmt: skip


def build_ledger(nodes: list[TraceNode], ledger: Ledger | None = None) -> Ledger:
    """The trace's nodes, idle, in `ledger` (default: a new one with a slot per compute unit)."""
    ledger = ledger if ledger is not None else Ledger(slots_per_gpu=WHOLE_GPU_COMPUTE)
    for n in nodes:
        memory = n.gpu_memory_mib or GPU_MEMORY_MIB
        gpus = tuple(GPUInfo(f"{n.name}-gpu{i}", i, n.model, memory) for i in range(n.gpus))
        ledger.upsert_node(NodeInfo(n.name, gpus, cpu_milli=n.cpu_milli, memory_mib=n.memory_mib, max_pods=MAX_PODS))
    return ledger


def stranded_gpu_memory(view: NodeView) -> int:
    """GPU memory (MiB) of the node that its GPUs' free compute cannot go with: per GPU, the free memory beyond
    free compute × the GPU's memory per compute unit (a GPU with no compute left strands all its free memory)."""
    total = 0
    for c, m, t in zip(view.free_compute, view.free_memory, view.total_memory, strict=True):
        usable = c * t // WHOLE_GPU_COMPUTE
        if m > usable:
            total += m - usable
    return total


def pod_request(pod: TracePod) -> PodRequest:
    containers: tuple[ContainerRequest, ...] = ()
    if pod.num_gpu:
        # whole GPUs take their whole memory; a sharing slice its `gpu_memory_mib`, else 1 MiB per unit
        memory = None if pod.compute >= WHOLE_GPU_COMPUTE else pod.gpu_memory_mib or pod.compute
        containers = (ContainerRequest("main", 0, pod.num_gpu, pod.compute, memory),)
    return PodRequest(
        uid=pod.name, containers=containers, name=pod.name, models=pod.models,
        cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib,
    )  # fmt: skip


@dataclass
class RunResult:
    """One run's per-event series (percent of GPU capacity) and summary."""

    policy: str
    seed: int
    trace: str
    pods: int
    arrived: list[float] = field(default_factory=list)
    allocated: list[float] = field(default_factory=list)
    frag_amount: list[float] = field(default_factory=list)
    frag_rate: list[float] = field(default_factory=list)
    #: memory-annotated traces only (else empty): % of the GPU memory stranded (`stranded_gpu_memory`)
    memory_stranded: list[float] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    arrived_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    seconds: float = 0.0
    #: CPU seconds of this process (the wall-clock `seconds` grow when the machine is shared)
    cpu_seconds: float = 0.0
    placed: int = 0


def replay(
    nodes: list[TraceNode],
    pods: list[TracePod],
    policy: str,
    seed: int,
    *,
    trace: str = "",
    tune: float = DEFAULT_TUNE,
    workload: Workload | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Replay one (trace, policy, seed) run and return its series."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    workload = workload if workload is not None else target_workload(pods)
    rng = random.Random(seed)
    order = shuffled_pods(pods, rng, total_gpu_milli(nodes), tune)
    rank = node_rank(nodes, rng)
    # fgdpp's reservation term: what the model-constrained pods of the whole trace need of each model, from
    # the ledger's GPUs per model (`Placer._sync_models`), as in the live extender
    pool = build_pool(pool_config(policy, seed, workload, reservation_workload=target_workload(pods, 1.0)),
                      rank=rank.__getitem__)  # fmt: skip
    ledger, placer = build_ledger(nodes, pool.ledger), pool.placer
    engine = pool.policies[policy]

    capacity_units = sum(n.gpus for n in nodes) * WHOLE_GPU_COMPUTE
    # fragmentation measure (its own memo: the policy's workload may be a different object)
    measure = Workload(workload.shapes, memory_per_unit=workload.memory_per_unit)
    frag_of: dict[str, float] = {}
    frag_total = 0.0
    for n in nodes:
        view = ledger.view(n.name)
        frag_of[n.name] = measure.node_fragment(view.cpu_free, view.free_compute, view.model)
        frag_total += frag_of[n.name]

    gpu_memory_total = sum(n.gpus * n.gpu_memory_mib for n in nodes)
    stranded_of = {n.name: stranded_gpu_memory(ledger.view(n.name)) for n in nodes} if gpu_memory_total else {}
    stranded_total = sum(stranded_of.values())
    result = RunResult(policy, seed, trace, len(order))
    requests: dict[tuple[object, ...], PodRequest] = {}
    arrived_milli = 0
    allocated_units = 0
    scale = 100.0 / capacity_units
    for i, pod in enumerate(order):
        key = (pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.models, pod.gpu_memory_mib)
        request = requests.get(key)
        if request is None:
            request = requests[key] = pod_request(pod)
        arrived_milli += pod.gpu_request_milli
        result.arrived_by_kind[pod.kind] += 1
        plan = placer.best(request)
        if plan is None:
            result.failed[pod.kind] += 1
        else:
            ledger.commit(pod.name, plan.node, plan.slices, cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib)
            engine.placed(plan.node, Demand.of(request))
            allocated_units += pod.num_gpu * pod.compute
            result.placed += 1
            view = ledger.view(plan.node)
            new = measure.node_fragment(view.cpu_free, view.free_compute, view.model)
            frag_total += new - frag_of[plan.node]
            frag_of[plan.node] = new
            if gpu_memory_total:
                stranded = stranded_gpu_memory(view)
                stranded_total += stranded - stranded_of[plan.node]
                stranded_of[plan.node] = stranded
        idle = capacity_units - allocated_units
        result.arrived.append(arrived_milli * 100.0 / (capacity_units * (MILLI // WHOLE_GPU_COMPUTE)))
        result.allocated.append(allocated_units * scale)
        result.frag_amount.append(frag_total * scale)
        result.frag_rate.append(100.0 * frag_total / idle if idle else 0.0)
        if gpu_memory_total:
            result.memory_stranded.append(100.0 * stranded_total / gpu_memory_total)
        if progress is not None and i % 500 == 0:
            progress(i, len(order))
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result
