"""`bench/openb_pairing.py`: the near-fit-first key orders choices as docs/openb.md ("Toward 96") says."""

from __future__ import annotations

from pathlib import Path

from bench.openb_pairing import NearFitFirst, alloc_at_100, main
from gpupool.fragmentation import TaskShape, Workload
from gpupool.simulator.trace import load_nodes, load_pods
from tests.unit.openb_data import write_synthetic

MIX = Workload(
    TaskShape(cpu, compute, 1, frozenset(), p)
    for cpu, compute, p in ((8000, 100, 0.5), (4000, 65, 0.2), (4000, 32, 0.2), (2000, 16, 0.1))
)


def test_threshold_is_half_the_smallest_share() -> None:
    policy = NearFitFirst(MIX, avoid_dead=True)
    assert (policy.smallest, policy.threshold) == (16, 8)


def test_near_fits_first_smallest_remainder_first_dead_remainders_last() -> None:
    policy = NearFitFirst(MIX, avoid_dead=True)
    assert policy._key(0, 8, True) > policy._key(100, None, True)  # a near fit beats any score
    assert policy._key(0, 3, True) > policy._key(100, 4, True)  # the smaller remainder first
    assert policy._key(56, 3, True) > policy._key(55, 3, True)  # then the score
    assert policy._key(0, None, True) > policy._key(100, None, True, dead=True)  # a dead remainder last
    assert NearFitFirst(MIX)._key(50, None, True, dead=True) == 50  # counted only with avoid_dead


def test_clip_keeps_node_scores_within_0_to_100() -> None:
    policy = NearFitFirst(MIX, clip=True)
    assert policy._key(0, 0, True) == 100 and policy._key(0, 8, True) == 92
    assert policy._key(100, None, True) == 91


def test_replay_is_deterministic(tmp_path: Path) -> None:
    node_path, pod_path = write_synthetic(tmp_path)
    nodes = load_nodes(node_path)
    pods = load_pods(pod_path, nodes)
    first = alloc_at_100(nodes, pods, 42, (None, False, True))
    assert 0 < first <= 100
    assert alloc_at_100(nodes, pods, 42, (None, False, True)) == first  # same inputs, same placement
    assert main(["--nodes", str(node_path), "--pods", str(pod_path), "--seeds", "1", "--avoid-dead"]) == 0
