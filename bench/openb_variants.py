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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, default=default_data_dir() / "openb_node_list_gpu_node.csv")
    parser.add_argument("--rule", choices=RULES, default="uniform")
    parser.add_argument("--share", type=float, default=0.25, help="share of the GPU pods that get an allow-list")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
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
    constrained = 0
    for row in rows:
        row.setdefault("gpu_spec", "")
        num = int(row["num_gpu"])
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


if __name__ == "__main__":
    sys.exit(main())
