"""Model-constrained variants of an openb pod list, to check that a policy's gains on `gpuspec25` generalise.

Writes a copy of the pod list where a seeded share of the GPU pods gets a `gpu_spec` allow-list (only
models with a node large enough for the pod). The allow-lists are drawn by one of three rules:

* `capacity`: one model, drawn in proportion to the cluster's GPUs of each model (no model is scarcer
  than another);
* `uniform`: one model, drawn uniformly (small models become scarce; unlike gpuspec25, G2 and T4 are not
  the ones under pressure);
* `subset`: two or three models, drawn uniformly (allow-lists that overlap).

    .venv/bin/python bench/openb_variants.py --pods ../shared/data/openb/openb_pod_list_default.csv \\
        --rule uniform --share 0.25 --seed 1 --out /tmp/openb_pod_list_default-uniform25.csv

`--memory NODES_OUT` also annotates GPU memory (the trace has none): NODES_OUT is the node list with a
`gpu_memory_mib` column, each GPU's memory by model (`GPU_MEMORY_MIB`: the public figure of each card; G2
and G3 are Alibaba's own names, assumed 16 and 32 GiB), and every sharing pod gets `gpu_memory_mib` =
its compute share × 16 GiB × 2^u, u uniform in [−1.5, 1.5] from the seeded generator (memory-heavy and
compute-heavy pods around proportion, up to 2.8× either way), rounded up to 256 MiB and clamped to
[256 MiB, 16 GiB] so every pod fits every model; whole and multi-GPU pods take whole GPUs. With
`--share 0` no pod gets an allow-list.

The variants are generated, never committed (the trace's data stays in ../shared/data).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.simulator.report import default_data_dir
from gpupool.simulator.trace import load_nodes

RULES = ("capacity", "uniform", "subset")
#: GPU memory (MiB) per model, for `--memory`; G2 and G3 are assumed (no public figure)
GPU_MEMORY_MIB = {"A10": 24576, "G2": 16384, "G3": 32768, "P100": 16384, "T4": 16384, "V100M16": 16384,
                  "V100M32": 32768}  # fmt: skip
#: the GPU a sharing pod's memory is drawn against, and the rounding step (MiB)
_REFERENCE_MIB, _STEP_MIB = 16384, 256


def gpu_memory(rng: random.Random, gpu_milli: int) -> int:
    """A sharing pod's GPU memory (MiB): its compute share of a 16 GiB GPU times 2^u, u ~ U[−1.5, 1.5]."""
    raw = gpu_milli / 1000 * _REFERENCE_MIB * 2 ** rng.uniform(-1.5, 1.5)
    return max(_STEP_MIB, min(_REFERENCE_MIB, -(-int(raw) // _STEP_MIB) * _STEP_MIB))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, default=default_data_dir() / "openb_node_list_gpu_node.csv")
    parser.add_argument("--rule", choices=RULES, default="uniform")
    parser.add_argument("--share", type=float, default=0.25, help="share of the GPU pods that get an allow-list")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--memory", type=Path, default=None, metavar="NODES_OUT",
                        help="also annotate GPU memory; write the node list with it here")  # fmt: skip
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    memory_rng = random.Random(args.seed + 1_000_003)  # its own stream: the allow-lists stay as without --memory
    gpus: dict[str, int] = {}
    largest: dict[str, int] = {}
    for n in load_nodes(args.nodes):
        if n.gpus:
            gpus[n.model] = gpus.get(n.model, 0) + n.gpus
            largest[n.model] = max(largest.get(n.model, 0), n.gpus)
    models = sorted(gpus)
    with args.pods.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if "gpu_spec" not in header:
        header.insert(header.index("gpu_milli") + 1, "gpu_spec")
    if args.memory is not None:
        header.insert(header.index("gpu_spec") + 1, "gpu_memory_mib")
        write_nodes(args.nodes, args.memory)
    constrained = 0
    for row in rows:
        row.setdefault("gpu_spec", "")
        num = int(row["num_gpu"])
        if args.memory is not None:
            sharing = num == 1 and int(row["gpu_milli"]) < 1000
            row["gpu_memory_mib"] = str(gpu_memory(memory_rng, int(row["gpu_milli"]))) if sharing else ""
        if num == 0 or rng.random() >= args.share:
            continue
        fit = [m for m in models if largest[m] >= num]
        if args.rule == "capacity":
            chosen = rng.choices(fit, weights=[gpus[m] for m in fit])
        elif args.rule == "uniform":
            chosen = [rng.choice(fit)]
        else:
            chosen = rng.sample(fit, min(len(fit), rng.choice((2, 3))))
        row["gpu_spec"] = "|".join(sorted(chosen))
        constrained += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}: {constrained} of {len(rows)} pods constrained ({args.rule}, seed {args.seed})")
    return 0


def write_nodes(source: Path, out: Path) -> None:
    """The node list with each GPU's memory (`GPU_MEMORY_MIB`) in a `gpu_memory_mib` column."""
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [*(reader.fieldnames or []), "gpu_memory_mib"]
        rows = list(reader)
    for row in rows:
        row["gpu_memory_mib"] = str(GPU_MEMORY_MIB[row["model"]]) if int(row["gpu"]) else "0"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
