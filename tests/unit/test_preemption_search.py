"""`find_preemption`'s fast search (issue 16) takes the same decisions as the plain one on random pools.

The plain search, kept here as the oracle: a full `Ledger.copy`, and for every node every unit tried with a
fresh fit (`_search` with no `bare` hint and every unit elsewhere listed). The fast one plans on an overlay
(`Ledger.overlay`), indexes units by node and remembers fits and quota checks. Both must give equal plans,
and neither may change the live ledger (not even a cached view).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupool import preemption
from gpupool.ledger import Ledger
from gpupool.placement import Placer
from gpupool.preemption import Unit, Victim, find_preemption
from gpupool.queues import PodEntry, QueueManager, WithinQueue
from gpupool.request import Locality, QoS
from tests.unit.test_queues import make_manager, pod, queue


def plain_best_node(
    manager: QueueManager, ledger: Ledger, placer: Placer, member: PodEntry, pool: list[Unit],
    quota: preemption._Quota, max_victims: int, order: Callable[[Unit], tuple[object, ...]],
    reclaiming: bool, own: Callable[[Unit], bool], *, single: bool,
) -> tuple[str, tuple[Unit, ...]] | None:  # fmt: skip
    """The search before issue 16: every node in order, every unit, every fit evaluated, every quota check
    recomputed from the whole victim set (`_Quota.plain_ok`)."""
    nodes = manager.eligible_nodes(member)
    names = ledger.node_names() if nodes is None else nodes

    def touches(v: Victim, node: str) -> bool:
        return v.holding.node == node or any(s.node == node for s in v.holding.slices)

    def fits(node: str, victims: Sequence[Victim]) -> bool:
        return preemption._fits(ledger, placer, member.request, node, victims)

    best: tuple[tuple[int, int, int, int, int], str, tuple[Unit, ...]] | None = None
    for node in names:
        if not ledger.has_node(node):
            continue
        local = [u for u in pool if any(touches(v, node) for v in u)]
        elsewhere = [u for u in pool if not any(touches(v, node) for v in u)]
        if not fits(node, [v for u in local for v in u]):
            continue
        chosen = preemption._search(node, local, lambda e=elsewhere: e, fits, quota.as_plain(), max_victims, order)  # type: ignore[misc]
        if chosen is None or (single and not chosen):
            continue
        flat = [v for u in chosen for v in u]
        score = (len(flat), sum(1 for u in chosen if own(u)) if reclaiming else 0,
                 sum(1 for v in flat if v.qos is not QoS.BEST_EFFORT),
                 max((v.priority for v in flat), default=-(2**31)), placer.rank(node))  # fmt: skip
        if best is None or score < best[0]:
            best = (score, node, chosen)
    return None if best is None else (best[1], best[2])


SHAPES = [(1, 100, None), (2, 100, None), (1, 50, 10000), (1, 25, 5000), (1, 30, None)]


def build(seed_pods: list[tuple[int, int, int, bool, int]], nodes: int, gpus: int,
          quotas: tuple[int, int], within: bool, reclaim: bool) -> QueueManager:  # fmt: skip
    m, _ = make_manager(nodes=nodes, gpus=gpus)
    w = WithinQueue.LOWER_PRIORITY if within else WithinQueue.NEVER
    m.set_queue(queue("team-a", quotas[0], cohort="c", within_queue=w, reclaim_borrowed=reclaim))
    m.set_queue(queue("team-b", quotas[1], cohort="c", within_queue=w, reclaim_borrowed=reclaim))
    for i, (shape, priority, team, best_effort, _) in enumerate(seed_pods):
        count, compute, memory = SHAPES[shape]
        entry = pod(f"p{i}", count=count, compute=compute, memory=memory, priority=priority,
                    namespace=("team-a", "team-b")[team])  # fmt: skip
        if best_effort:
            entry.request = replace(entry.request, qos=QoS.BEST_EFFORT)
        m.upsert_pod(entry)
    m.schedule()
    return m


def live_state(m: QueueManager) -> tuple[object, ...]:
    views = tuple(id(m.ledger.view(n)) for n in m.ledger.node_names())  # cached: the same object unless changed
    return m.ledger.snapshot(), m.ledger.generation, views


pods = st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(0, 3), st.integers(0, 1), st.booleans(),
                          st.integers(0, 0)), min_size=1, max_size=24)  # fmt: skip
heads = st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(0, 6), st.integers(0, 1), st.booleans(),
                           st.booleans()), min_size=1, max_size=4)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods, heads, st.integers(1, 4), st.integers(1, 4), st.tuples(st.integers(0, 800), st.integers(0, 800)),
       st.booleans(), st.booleans())  # fmt: skip
def test_fast_search_takes_the_plain_searchs_decisions(
    admitted: list[tuple[int, int, int, bool, int]], waiting: list[tuple[int, int, int, bool, bool]],
    nodes: int, gpus: int, quotas: tuple[int, int], within: bool, reclaim: bool,
) -> None:  # fmt: skip
    m = build(admitted, nodes, gpus, quotas, within, reclaim)
    for j, (shape, priority, team, best_effort, remote) in enumerate(waiting):
        count, compute, memory = SHAPES[shape]
        entry = pod(f"w{j}", count=count, compute=compute, memory=memory, priority=priority,
                    namespace=("team-a", "team-b")[team])  # fmt: skip
        entry.request = replace(entry.request, qos=QoS.BEST_EFFORT if best_effort else QoS.GUARANTEED,
                                locality=Locality.POOL if remote else Locality.LOCAL)  # fmt: skip
        m.upsert_pod(entry)
    r = m.schedule()
    for uid in r.preemptors:
        before = live_state(m)
        fast = find_preemption(m, uid)
        assert live_state(m) == before  # the overlay never touched the live ledger
        with mock.patch.object(preemption, "_best_node", plain_best_node), \
                mock.patch.object(Ledger, "overlay", Ledger.copy):  # fmt: skip
            plain = find_preemption(m, uid)
            assert fast == plain
            if plain is not None:  # the next victim set, as after a refused eviction
                refused = frozenset({plain.victims[0].uid})
                plain_next = find_preemption(m, uid, exclude=refused)
        if plain is not None:
            assert find_preemption(m, uid, exclude=refused) == plain_next
        assert live_state(m) == before


def test_an_overlay_clones_only_the_nodes_it_changes() -> None:
    m, _ = make_manager(nodes=3, gpus=2)
    m.set_queue(queue("team-a", 10000))
    for i in range(6):
        m.upsert_pod(pod(f"p{i}"))
    m.schedule()
    live = m.ledger
    before = live_state(m)
    over = live.overlay()
    victim = next(h for h in live.holdings() if h.node == "node-1")
    with over.without([victim.pod]):
        assert over.gpu_free(victim.slices[0].gpu) == (100, 40960)
        assert live.gpu_free(victim.slices[0].gpu) == (0, 0)
    assert over._nodes["node-0"] is live._nodes["node-0"]  # untouched: shared
    assert over._nodes["node-1"] is not live._nodes["node-1"]  # changed: its own
    over.discard(victim.pod)
    assert live.holding(victim.pod) == victim and live_state(m) == before


def test_the_same_inventory_again_changes_nothing() -> None:
    """Issue 16: every GPUNode event upserts its node; one that changes nothing keeps `generation` (the key of
    the controller's preemption memo), the holdings and the cached views, whatever the GPUs' order."""
    m, _ = make_manager(nodes=2, gpus=2)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("p0"))
    m.schedule()
    live = m.ledger
    before = live_state(m)
    info = live.node_info("node-0")
    assert live.upsert_node(info) == []
    assert live.upsert_node(replace(info, gpus=tuple(reversed(info.gpus)))) == []
    assert live_state(m) == before
    live.upsert_node(replace(info, gpus=(replace(info.gpus[0], healthy=False), *info.gpus[1:])))
    assert live.generation != before[1]  # a change still counts
