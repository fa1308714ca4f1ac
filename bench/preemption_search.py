"""`find_preemption` on a full pool: seconds per call for three blocked heads, and the plans they get.

Setup (seeded, `--seed`): N nodes x 8 GPUs (80 GiB), two GPUQueues of one cohort ("big", nominal compute of the
whole pool; "small", 12.5 %), the pool filled with one-GPU pods of priority 0-2, 80 % "big", 20 % "small" (which
then borrows). Three heads of priority 10 wait: a 2-GPU pod of
"big" (capacity-bound: it needs two victims on one node), a 1-GPU pod of "small" (borrowing: victims by fair
share and quota), a 4-GPU pod of "big". Each is searched `--repeat` times (the search has no memo of its own;
the controller's memo is keyed on the ledger generation and `QueueManager.version`: docs/e2e.md "Controller at
scale"); the best and the first time are printed with the plan (node, victims), so two code versions can be
compared on the same pool. Prints figures only, asserts nothing.

    .venv/bin/python bench/preemption_search.py [--nodes 1000] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.pool import PoolConfig, build_pool
from gpupool.preemption import find_preemption
from gpupool.queues import PodEntry, QueueManager, QueueSpec
from gpupool.quota import Limit
from gpupool.request import ContainerRequest, PodRequest


def full_pool(nodes: int, seed: int) -> tuple[QueueManager, list[str]]:
    """The manager over a full pool, and the uids of the three blocked heads."""
    pool = build_pool(PoolConfig(policies=("binpack",), default_policy="binpack"))
    for n in range(nodes):
        board = tuple(GPUInfo(f"GPU-{n}-{i}", i, "A100-80GB", 81920) for i in range(8))
        pool.ledger.upsert_node(NodeInfo(f"node-{n:05d}", board))
    m = QueueManager(pool.ledger, pool.placer)
    m.set_queue(QueueSpec("big", Limit(nodes * 800, None), cohort="c", namespaces=frozenset({"big"})))
    m.set_queue(QueueSpec("small", Limit(nodes * 100, None), cohort="c", namespaces=frozenset({"small"})))
    rng = random.Random(seed)

    def add(uid: str, ns: str, gpus: int, priority: int, created: float) -> None:
        request = PodRequest(uid=uid, namespace=ns, name=uid, priority=priority,
                             containers=(ContainerRequest("c", 0, gpus, 100, None),))  # fmt: skip
        m.upsert_pod(PodEntry(request=request, created=created, gated=True))

    for i in range(nodes * 8):
        add(f"u{i}", "big" if rng.random() < 0.8 else "small", 1, rng.choice((0, 1, 2)), float(i))
    m.schedule(now=1.0)
    heads = []
    for j, (ns, gpus) in enumerate((("big", 2), ("small", 1), ("big", 4))):
        heads.append(f"head{j}-{ns}-{gpus}gpu")
        add(heads[-1], ns, gpus, 10, float(nodes * 8 + j))
    m.schedule(now=2.0)
    return m, heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    t0 = time.perf_counter()
    m, heads = full_pool(args.nodes, args.seed)
    setup = time.perf_counter() - t0
    out: dict[str, object] = {"nodes": args.nodes, "pods": args.nodes * 8, "setup_s": round(setup, 2)}
    for head in heads:
        times = []
        plan = None
        for _ in range(args.repeat):
            t = time.perf_counter()
            plan = find_preemption(m, head)
            times.append(time.perf_counter() - t)
        out[head] = {
            "first_s": round(times[0], 3), "best_s": round(min(times), 3),
            "plan": None if plan is None else {"node": plan.node, "victims": [v.uid for v in plan.victims]},
        }  # fmt: skip
        print(f"{args.nodes} nodes {head}: first {times[0]:.3f} s, best {min(times):.3f} s of {args.repeat}; "
              f"plan {None if plan is None else (plan.node, [v.uid for v in plan.victims])}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
