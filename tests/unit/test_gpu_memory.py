"""GPU memory in placement (issue 15 item 6): fgdpp charges the GPU memory a GPU's free compute cannot go with, so on
a memory-annotated workload it strands less GPU memory than the same policy blind to memory, at equal or better
compute allocation, on one GPU size and on mixed sizes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.openb_variants import gpu_memory
from gpupool.policies import fgdpp
from gpupool.policies.fgdpp import gpu_mismatch
from gpupool.simulator.protocol import pod_request, replay
from gpupool.simulator.trace import TraceError, TraceNode, TracePod, load_nodes, load_pods


def test_mismatch_is_zero_when_memory_follows_compute() -> None:
    assert gpu_mismatch([100, 40], [16384, 6553.6], (16384, 16384)) == pytest.approx(0)  # type: ignore[list-item]
    assert gpu_mismatch([70, 30], [70, 30], (100, 100)) == 0  # the published trace: 1 MiB per unit of 100 MiB
    # 25 % compute left with 8 GiB of 16: 25 units' worth of memory stranded
    assert gpu_mismatch([25], [8192], (16384,)) == 25
    assert gpu_mismatch([25], [8192], (32768,)) == 0  # a 32 GiB GPU: 8 GiB is what 25 % of it goes with
    # 50 % compute left but only 4 GiB of 16: compute without memory is not charged (only memory stranding is)
    assert gpu_mismatch([50], [4096], (16384,)) == 0


def test_memory_columns_load_and_whole_gpus_take_their_whole_memory(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model,gpu_memory_mib\nn0,64000,262144,2,T4,16384\n")
    pods = tmp_path / "pods.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,gpu_memory_mib\n"
                    "a,1000,1024,1,500,,6144\nb,1000,1024,1,1000,,\n")  # fmt: skip
    assert load_nodes(nodes)[0].gpu_memory_mib == 16384
    a, b = load_pods(pods)
    assert pod_request(a).containers[0].memory_mib == 6144
    assert pod_request(b).containers[0].memory_mib is None  # the whole GPU's memory
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_memory_mib\nc,1000,1024,2,1000,4096\n")
    with pytest.raises(TraceError, match=r"gpu_memory_mib.*only sharing pods"):
        load_pods(pods)


def test_memory_aware_fgdpp_strands_less_gpu_memory_at_equal_or_better_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [TraceNode(f"n{i}", 64000, 262144, 4, "T4", 16384) for i in range(8)]
    stranded = {0.0: 0.0, 1.0: 0.0}
    for trial in range(4):
        rng = random.Random(trial)
        pods = []
        for i in range(80):
            milli = rng.choice([200, 300, 400, 500, 600])
            pods.append(TracePod(f"p{i:03d}", 2000, 4096, 1, milli, frozenset(), i + 2, gpu_memory(rng, milli)))
        at_100 = {}
        for weight in (0.0, 1.0):
            monkeypatch.setattr(fgdpp, "GPU_MEMORY_WEIGHT", weight)
            r = replay(nodes, pods, "fgdpp", 1)
            k = next(i for i, a in enumerate(r.arrived) if a >= 100)
            at_100[weight] = (r.allocated[k], r.memory_stranded[k])
            stranded[weight] += r.memory_stranded[k]
        assert at_100[1.0][0] >= at_100[0.0][0], trial
    # over the trials, not in each: with fgdpp's pairing bands trial 2 places 0.94 points more and strands 0.19
    # points more (4.22 vs 4.03 % of GPU memory); the four together strand 27 % less
    assert stranded[1.0] < 0.75 * stranded[0.0]


def test_on_mixed_gpu_sizes_fgdpp_strands_less_memory_at_equal_or_better_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12 nodes of 16 GiB GPUs and 2 of 32 GiB, sharing pods with memory around their compute share of 16 GiB and
    whole-GPU pods (as the openb memory variant, docs/openb.md "### GPU memory"). Charging compute left without
    memory as well (the term before) stranded as much memory as the blind policy here, and more on openb."""
    nodes = [TraceNode(f"a{i}", 64000, 262144, 4, "T4", 16384) for i in range(12)]
    nodes += [TraceNode(f"b{i}", 64000, 262144, 4, "V100M32", 32768) for i in range(2)]
    total = {0.0: [0.0, 0.0], 1.0: [0.0, 0.0]}
    for trial in range(12):
        rng = random.Random(trial)
        pods = []
        for i in range(150):
            if rng.random() < 0.4:
                pods.append(TracePod(f"p{i:03d}", 2000, 4096, rng.choice([1, 1, 2]), 1000, frozenset(), i + 2))
                continue
            milli = rng.choice([200, 300, 400, 500, 600])
            pods.append(TracePod(f"p{i:03d}", 2000, 4096, 1, milli, frozenset(), i + 2, gpu_memory(rng, milli)))
        for weight in (0.0, 1.0):
            monkeypatch.setattr(fgdpp, "GPU_MEMORY_WEIGHT", weight)
            r = replay(nodes, pods, "fgdpp", 1)
            k = next(i for i, a in enumerate(r.arrived) if a >= 100)
            total[weight][0] += r.allocated[k]
            total[weight][1] += r.memory_stranded[k]
    assert total[1.0][0] >= total[0.0][0]  # allocation, summed over the trials
    assert total[1.0][1] < 0.75 * total[0.0][1]  # stranded memory
