"""`bench/openb_loss.py` accounts for every arrived pod and every idle unit of a run at 100 % arrived."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.openb_loss import analyse, main
from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.simulator.trace import load_nodes, load_pods
from tests.unit.openb_data import write_synthetic


@pytest.mark.parametrize("policy", ["fgdpp", "fgd", "bestfit"])
def test_loss_accounts_for_every_pod_and_idle_unit(tmp_path: Path, policy: str) -> None:
    node_path, pod_path = write_synthetic(tmp_path)
    nodes = load_nodes(node_path)
    pods = load_pods(pod_path, nodes)
    loss = analyse(nodes, pods, policy, 42, after=0.0)
    assert loss.failed, "the synthetic trace should run out of GPUs before 100 % arrived"
    failed = sum(k * count * compute for (count, compute), k in loss.failed.items())
    assert loss.arrived == loss.allocated + failed  # every arrived pod placed or failed
    idle = loss.free_gpus * WHOLE_GPU_COMPUTE + sum(loss.idle_by_remainder.values())
    assert loss.capacity - loss.allocated == idle  # every idle unit fully free or a remainder
    assert all(sum(held) + free == WHOLE_GPU_COMPUTE for held, free in loss.compositions)
    assert sum(free * k for (_, free), k in loss.compositions.items()) == sum(loss.idle_by_remainder.values())
    assert all(alt is None or 0 <= alt < WHOLE_GPU_COMPUTE - c for c, alt in loss.openings)
    assert (loss.free_gpus == 0) == (loss.last_free_at is not None)
    assert analyse(nodes, pods, policy, 42, after=0.0) == loss  # same inputs, same account


def test_cli_prints_the_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node_path, pod_path = write_synthetic(tmp_path)
    assert main(["--nodes", str(node_path), "--pods", str(pod_path), "--seed", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "fgdpp seed 1: allocated" in out and "failed pods" in out and "partially used GPUs" in out
