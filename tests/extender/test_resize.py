"""Resize at the extender (extender/resize.py) against the fake API server over the real watch: growth with and
without room, a shrink that waits for the agent's report of memory in use, and a resize racing binds."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from e2e.polling import wait_for
from gpupool import assignment, resources
from gpupool import resize as rz
from tests.extender.conftest import KEY, add_gpu_node, bind_body, create_pod, kubelet_took, pod

PODS = "/api/v1/namespaces/default/pods"


def bound(kube: Any, ext: Any, name: str, compute: int, memory: int, node: str = "gpu-0") -> dict[str, Any]:
    p = create_pod(kube, pod(name, compute=compute, memory=memory))
    assert ext.post("bind", bind_body(p, node)).json() == {"Error": ""}
    kubelet_took(kube, p)
    uid = p["metadata"]["uid"]
    wait_for(lambda: ext.service.pods.get(uid, {}).get("spec", {}).get("nodeName"), 10, f"the watch to show {name}")
    return p


def ask(kube: Any, name: str, seq: int, *, approved: bool = False, **request: Any) -> None:
    """What the user (`gpupool resize`) writes, and, with `approved`, the controller's quota approval."""
    value = json.dumps({"seq": seq, "container": "main", **request})
    annotations = {rz.REQUEST: value}
    if approved:
        current = kube.get(f"{PODS}/{name}")
        current["metadata"]["annotations"][rz.REQUEST] = value
        annotations[rz.STATUS] = rz.status_annotation(current, rz.outcome(
            rz.parse_request(value), rz.State.APPROVED, "quota reserved", 2e9))  # fmt: skip
    kube.patch(f"{PODS}/{name}", {"metadata": {"annotations": annotations}})


def final(kube: Any, name: str, seq: int) -> rz.Outcome:
    def done() -> rz.Outcome | None:
        o = rz.outcome_of(kube.get(f"{PODS}/{name}"), seq)
        return o if o is not None and o.state in rz.FINAL else None

    return wait_for(done, 10, f"the outcome of resize #{seq} of {name}")


def slices(kube: Any, name: str) -> list[tuple[int, int]]:
    record = assignment.verify(kube.get(f"{PODS}/{name}")["metadata"]["annotations"][resources.ASSIGNMENT], KEY)
    return [(s.compute, s.memory_mib) for s in record.slices]


def held(ext: Any, p: dict[str, Any]) -> list[tuple[int, int]]:
    h = ext.service.ledger.holding(p["metadata"]["uid"])
    return [(s.compute, s.memory_mib) for s in h.slices] if h is not None else []


def test_growth_with_room_is_applied_and_re_signed(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1, memory=16384)
    a = bound(kube, ext, "a", 30, 4096)
    ask(kube, "a", 1, compute=60, memory=8192)
    uid = a["metadata"]["uid"]
    wait_for(lambda: rz.REQUEST in ext.service.pods[uid]["metadata"]["annotations"], 10, "the request")
    assert rz.outcome_of(kube.get(f"{PODS}/a"), 1) is None  # a growth waits for the controller's quota approval
    ask(kube, "a", 1, compute=60, memory=8192, approved=True)
    o = final(kube, "a", 1)
    assert o.state is rz.State.APPLIED, o
    assert "30% / 4096 MiB -> 60% / 8192 MiB on GPU-gpu-0-0" in o.message
    assert slices(kube, "a") == [(60, 8192)]
    wait_for(lambda: held(ext, a) == [(60, 8192)], 10, "the ledger to hold the new slices")
    # the ledger holds the new slices from the write on; the in-flight record until the watch shows them
    wait_for(lambda: ext.service.inflight == {}, 10, "the pod's watch event to confirm the new assignment")
    assert held(ext, a) == [(60, 8192)]
    assert ext.service.ledger.gpu_free("GPU-gpu-0-0") == (40, 8192)


def test_growth_without_room_is_refused_and_changes_nothing(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1, memory=16384)
    a = bound(kube, ext, "a", 30, 4096)
    bound(kube, ext, "b", 50, 4096)
    before = ext.service.ledger_snapshot()
    ask(kube, "a", 1, compute=60, approved=True)
    o = final(kube, "a", 1)
    assert o.state is rz.State.REFUSED and "no room to grow: GPU GPU-gpu-0-0" in o.message
    assert slices(kube, "a") == [(30, 4096)] and held(ext, a) == [(30, 4096)]
    assert ext.service.ledger_snapshot() == before


def test_a_memory_shrink_waits_for_the_usage_report_and_is_refused_below_it(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1, memory=16384)
    a = bound(kube, ext, "a", 30, 8192)
    ask(kube, "a", 1, memory=2048)
    uid = a["metadata"]["uid"]
    wait_for(lambda: rz.REQUEST in ext.service.pods[uid]["metadata"]["annotations"], 10, "the request")
    assert rz.outcome_of(kube.get(f"{PODS}/a"), 1) is None  # waits for the node agent
    usage = rz.usage_annotation(1, {"0": {"GPU-gpu-0-0": 5000}}, "", 2e9)
    kube.patch(f"{PODS}/a", {"metadata": {"annotations": {rz.USAGE: usage}}})
    o = final(kube, "a", 1)
    assert o.state is rz.State.REFUSED and "uses 5000 MiB of GPU GPU-gpu-0-0" in o.message
    ask(kube, "a", 2, compute=10, memory=6000)
    usage = rz.usage_annotation(2, {"0": {"GPU-gpu-0-0": 5000}}, "", 2e9)
    kube.patch(f"{PODS}/a", {"metadata": {"annotations": {rz.USAGE: usage}}})
    assert final(kube, "a", 2).state is rz.State.APPLIED
    assert slices(kube, "a") == [(10, 6000)]
    wait_for(lambda: held(ext, a) == [(10, 6000)], 10, "the ledger to hold the smaller slices")


def test_a_resize_racing_binds_on_its_gpu_never_over_commits(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1, memory=16384)
    bound(kube, ext, "a", 30, 4096)
    others = [create_pod(kube, pod(f"o{i}", compute=20, memory=2048)) for i in range(4)]

    def bind(p: dict[str, Any]) -> str:
        return str(ext.post("bind", bind_body(p, "gpu-0")).json()["Error"])

    with ThreadPoolExecutor(5) as workers:
        futures = [workers.submit(bind, p) for p in others]
        ask(kube, "a", 1, compute=70, approved=True)
        errors = [f.result() for f in futures]
    o = final(kube, "a", 1)
    # whatever won, the API server's assignments and the ledger stay within the GPU
    total = slices(kube, "a")[0][0] + sum(
        slices(kube, p["metadata"]["name"])[0][0] for p, e in zip(others, errors, strict=True) if not e
    )
    assert total <= 100, (o, errors)
    assert (o.state is rz.State.APPLIED) == (slices(kube, "a") == [(70, 4096)])
    wait_for(lambda: ext.service.inflight == {}, 10, "writes to settle")
    gpu = ext.service.ledger.gpu("GPU-gpu-0-0")
    assert gpu.used_compute == total


def test_a_malformed_pod_never_stops_the_watch() -> None:
    from extender.resize import Resizer

    class Service:
        key = KEY
        api = None
        clock = staticmethod(lambda: 2e9)

    one = (assignment.SliceRecord(0, "G", "n", 30, 1024, "gpu0-0"),)
    record = assignment.Assignment("u", "n", one, "2025-01-01T00:00:00Z")
    annotations = {rz.REQUEST: json.dumps({"seq": 1, "container": "c", "compute": 5}),
                   resources.ASSIGNMENT: record.signed(KEY).to_annotation()}  # fmt: skip
    meta = {"name": "x", "namespace": "d", "uid": "u", "annotations": annotations}
    bad = {"metadata": meta, "spec": ["not", "a", "map"]}
    assert Resizer(Service()).handle(bad) is None  # type: ignore[arg-type]
