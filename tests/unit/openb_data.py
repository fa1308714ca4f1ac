"""Where the openb trace lives for tests: `$GPUPOOL_OPENB_DIR`, else ../shared/data/openb next to the repo."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpupool.simulator.report import default_data_dir

DATA = default_data_dir(Path(__file__).resolve().parents[2])
NODES = DATA / "openb_node_list_gpu_node.csv"


def pods_file(trace: str = "default") -> Path:
    return DATA / f"openb_pod_list_{trace}.csv"


needs_openb = pytest.mark.skipif(
    not NODES.is_file() or not pods_file().is_file(),
    reason=f"openb trace not found in {DATA} (set GPUPOOL_OPENB_DIR to the folder holding openb_*.csv)",
)

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
)


def write_synthetic(tmp: Path, nodes: int = 24, pods: int = 200, seed: int = 7) -> tuple[Path, Path]:
    """A small openb-like trace: 8-GPU and 2-GPU nodes, a sharing/whole/multi/CPU-only mix."""
    rng = random.Random(seed)
    node_path = tmp / "nodes.csv"
    pod_path = tmp / "openb_pod_list_synthetic.csv"
    lines = [NODE_HEADER]
    for i in range(nodes):
        if i % 3 == 2:
            lines.append(f"openb-node-{i:04d},104000,524288,2,T4\n")
        else:
            lines.append(f"openb-node-{i:04d},96000,393216,8,G2\n")
    node_path.write_text("".join(lines))
    lines = [POD_HEADER]
    shares = [810, 470, 320, 650, 230, 160, 550]
    for i in range(pods):
        roll = rng.random()
        if roll < 0.13:
            row = (rng.choice([8000, 12500, 16000]), 32768, 0, 0)
        elif roll < 0.50:
            row = (rng.choice([3152, 4000, 8000]), 16384, 1, rng.choice(shares))
        elif roll < 0.97:
            row = (rng.choice([8000, 11300, 11400]), 49152, 1, 1000)
        else:
            row = (rng.choice([24000, 48000]), 131072, rng.choice([2, 4]), 1000)
        cpu, mem, num, milli = row
        lines.append(f"openb-pod-{i:04d},{cpu},{mem},{num},{milli},,LS,Running,0,0,0\n")
    pod_path.write_text("".join(lines))
    return node_path, pod_path
