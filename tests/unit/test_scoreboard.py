"""`Placer.best` over the pool keeps a score board per pod shape, updated from the ledger's change log: it must pick
what scoring every node afresh picks, through commits, releases, node changes and removals."""

from __future__ import annotations

import random

from gpupool.fragmentation import default_workload
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger
from gpupool.placement import Placer
from gpupool.policies import make_policy
from gpupool.request import ContainerRequest, PodRequest
from gpupool.scoreboard import ScoreBoard


def _node(n: int, gpus: int = 4, model: str = "A") -> NodeInfo:
    return NodeInfo(f"n{n}", tuple(GPUInfo(f"G{n}-{i}", i, model, 100) for i in range(gpus)),
                    cpu_milli=32000, memory_mib=131072)  # fmt: skip


def test_board_best_matches_scoring_every_node_through_changes() -> None:
    ledger = Ledger()
    for n in range(8):
        ledger.upsert_node(_node(n, 2 + n % 3, ("A", "B")[n % 2]))
    order = list(range(40))
    random.Random(5).shuffle(order)
    rank = {f"n{n}": order[n] for n in range(40)}.__getitem__
    policies = {name: make_policy(name, workload=default_workload()) for name in ("fgd", "fgdpp", "binpack")}
    placers = {name: Placer(ledger, policies, name, rank=rank) for name in policies}  # kept: boards live across pods
    rng = random.Random(7)
    held: list[str] = []
    for i in range(300):
        r = rng.random()
        if r < 0.2 and held:
            ledger.discard(held.pop(rng.randrange(len(held))))  # (gone already if its node changed)
        elif r < 0.23:
            n = rng.randrange(12)
            if ledger.has_node(f"n{n}") and rng.random() < 0.5:
                ledger.remove_node(f"n{n}")
            else:
                ledger.upsert_node(_node(n, rng.choice([1, 2, 4])))
        name = rng.choice(list(policies))
        p = placers[name]
        models = rng.choice([frozenset(), frozenset(), frozenset({"A"}), frozenset({"B"})])
        request = PodRequest(uid=f"p{i}", containers=(ContainerRequest("c", 0, rng.choice([1, 1, 2]),
                             rng.choice([25, 50, 100]), None),), models=models,
                             cpu_milli=rng.choice([1000, 4000]))  # fmt: skip
        fast = p.best(request)
        slow = p.best(request, ledger.node_names())
        assert (fast is None) == (slow is None), (i, name)
        if fast is not None and slow is not None:
            assert (fast.node, fast.slices, fast.score) == (slow.node, slow.slices, slow.score), (i, name)
            ledger.commit(request.uid, fast.node, fast.slices, cpu_milli=request.cpu_milli)
            held.append(request.uid)


def test_change_log_reports_what_changed_and_when_it_no_longer_reaches_back() -> None:
    ledger = Ledger()
    ledger.upsert_node(_node(0))
    mark = ledger.change_mark()
    ledger.upsert_node(_node(1))
    ledger.remove_node("n0")
    assert ledger.changes_since(mark) == ["n1", "n0"]
    assert ledger.changes_since(ledger.change_mark()) == []
    copy = ledger.copy()
    assert copy.changes_since(mark) is None  # a planning copy knows nothing before it was made


def test_board_ties_go_to_the_lowest_rank_and_stale_entries_are_dropped() -> None:
    board = ScoreBoard({"a": 2, "b": 1, "c": 3}.__getitem__, 0)
    board.update("a", 50)
    board.update("b", 50)
    board.update("c", 70)
    assert board.best() == "c"
    board.update("c", None)
    assert board.best() == "b"
    board.update("b", 10)
    assert board.best() == "a"
    for _ in range(200):  # a node going back and forth leaves stale entries that must not grow without bound
        board.update("a", 20)
        board.update("a", 50)
    assert board.best() == "a"
    assert sum(len(h) for h in board._heaps.values()) < 200
