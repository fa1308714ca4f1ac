"""Bind: the one place that commits slices. Signed assignment, Binding, rollback, idempotence, concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from e2e.polling import wait_for
from gpupool import assignment, resources
from gpupool.slots import parse_slot
from tests.extender.conftest import (
    KEY,
    add_gpu_node,
    bind_body,
    create_pod,
    filter_body,
    gpunode,
    kubelet_took,
    node,
    pod,
    start_extender,
)

PODS = "/api/v1/namespaces/default/pods"


def test_bind_writes_signed_assignment_and_binding(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=2)
    p = create_pod(kube, pod("train", count=2, compute=40, memory=2048))
    r = ext.post("bind", bind_body(p, "gpu-0"))
    assert r.status_code == 200 and r.json() == {"Error": ""}
    stored = kube.get(f"{PODS}/train")
    assert stored["spec"]["nodeName"] == "gpu-0"
    record = assignment.verify(stored["metadata"]["annotations"][resources.ASSIGNMENT], KEY)
    assert record.pod == p["metadata"]["uid"] and record.node == "gpu-0"
    assert sorted(s.gpu for s in record.slices) == ["GPU-gpu-0-0", "GPU-gpu-0-1"]
    assert all(s.compute == 40 and s.memory_mib == 2048 for s in record.slices)
    held = ext.service.ledger.holding(p["metadata"]["uid"])
    assert held is not None and held.slices == record.slices
    assert ("default", "train", "gpu-0") in kube.handler.bindings


def test_bind_is_idempotent(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    p = create_pod(kube, pod("p"))
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    before = ext.service.ledger_snapshot()
    text = kube.get(f"{PODS}/p")["metadata"]["annotations"][resources.ASSIGNMENT]
    wait_for(lambda: ext.service.pods.get(p["metadata"]["uid"], {}).get("spec", {}).get("nodeName"), 5, "watch")
    for _ in range(3):
        assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    assert ext.service.ledger_snapshot() == before
    assert kube.get(f"{PODS}/p")["metadata"]["annotations"][resources.ASSIGNMENT] == text
    assert len(kube.handler.bindings) == 1
    # a bind to another node for an already-bound pod fails and changes nothing
    add_gpu_node(kube, "gpu-1", gpus=1)
    wait_for(lambda: ext.service.ledger.has_node("gpu-1"), 5, "gpu-1")
    assert "already bound" in ext.post("bind", bind_body(p, "gpu-1")).json()["Error"]
    assert ext.service.ledger_snapshot()["holdings"] == before["holdings"]


def test_failed_binding_leaves_nothing_behind_and_the_retry_binds(kube, ext):
    """The assignment travels in the Binding: a Binding that fails writes nothing and frees the slices."""
    add_gpu_node(kube, "gpu-0", gpus=1)
    p = create_pod(kube, pod("p"))
    kube.handler.fail_binding.add("p")
    assert "binding" in ext.post("bind", bind_body(p, "gpu-0")).json()["Error"].lower()
    # rolled back: no annotation, nothing held
    assert resources.ASSIGNMENT not in (kube.get(f"{PODS}/p")["metadata"].get("annotations") or {})
    assert ext.service.ledger.holding(p["metadata"]["uid"]) is None
    assert ext.service.metrics.bind_rollbacks._value.get() == 1
    kube.handler.fail_binding.clear()
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    assert kube.get(f"{PODS}/p")["spec"]["nodeName"] == "gpu-0"


def test_pod_bound_elsewhere_meanwhile_fails_cleanly(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    add_gpu_node(kube, "gpu-1", gpus=1)
    p = create_pod(kube, pod("raced"))
    # someone else binds it first (another scheduler replica that lost its lease late, say)
    kube.api.request("POST", f"/api/v1/namespaces/{p['metadata']['namespace']}/pods/raced/binding",
                     body={"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "raced"},
                           "target": {"kind": "Node", "name": "gpu-1"}}, content_type="application/json")  # fmt: skip
    err = ext.post("bind", bind_body(p, "gpu-0")).json()["Error"]
    assert "already bound to gpu-1" in err or "409" in err
    assert ext.service.ledger.holding(p["metadata"]["uid"]) is None


def test_binding_whose_reply_was_lost_counts_as_done(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    p = create_pod(kube, pod("lost-reply"))
    kube.handler.lose_binding_reply.add("lost-reply")
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    stored = kube.get(f"{PODS}/lost-reply")
    assert stored["spec"]["nodeName"] == "gpu-0"
    held = ext.service.ledger.holding(p["metadata"]["uid"])
    assert held is not None
    assert assignment.verify(stored["metadata"]["annotations"][resources.ASSIGNMENT], KEY).slices == held.slices
    assert ext.service.metrics.bind_rollbacks._value.get() == 0


def test_bind_rechecks_capacity(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1, memory=4096)
    a = create_pod(kube, pod("a", compute=60, memory=3000))
    b = create_pod(kube, pod("b", compute=60, memory=3000))
    # both passed filter against the same state; only one bind may win
    for p in (a, b):
        assert ext.post("filter", filter_body(p, ["gpu-0"])).json()["NodeNames"] == ["gpu-0"]
    assert ext.post("bind", bind_body(a, "gpu-0")).json() == {"Error": ""}
    kubelet_took(kube, a)  # else b waits for the kubelet first (same slot count, test_identity.py)
    err = ext.post("bind", bind_body(b, "gpu-0")).json()["Error"]
    assert "no longer fits" in err
    assert resources.ASSIGNMENT not in (kube.get(f"{PODS}/b")["metadata"].get("annotations") or {})


def test_concurrent_binds_on_one_node_never_overallocate(kube, extender_factory):
    ext = extender_factory(identity_wait_seconds=0)  # capacity only: the identity rule would refuse most binds
    add_gpu_node(kube, "gpu-0", gpus=4, memory=10_000)
    pods = [create_pod(kube, pod(f"p{i:02d}", compute=10 + (i % 3) * 10, memory=700)) for i in range(60)]
    wait_for(lambda: len(ext.service.pods) == 60, 10, "the watch to see every pod")
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda p: ext.post("bind", bind_body(p, "gpu-0")).json()["Error"], pods))
    won = [p for p, e in zip(pods, results, strict=True) if e == ""]
    lost = [e for e in results if e]
    assert won and lost  # 4 GPUs x 100 % cannot hold 60 x 10..30 %
    assert all("no longer fits" in e for e in lost), set(lost)
    ledger = ext.service.ledger
    for g in ledger.gpus_of("gpu-0"):
        assert g.used_compute <= 100 and g.used_memory <= 10_000
    slots: set[str] = set()
    for p in won:
        stored = kube.get(f"{PODS}/{p['metadata']['name']}")
        record = assignment.verify(stored["metadata"]["annotations"][resources.ASSIGNMENT], KEY)
        for s in record.slices:
            assert s.slot not in slots
            parse_slot(s.slot)
            slots.add(s.slot)
    assert len(kube.handler.bindings) == len(won)
    compute = sum(g.used_compute for g in ledger.gpus_of("gpu-0"))
    assert compute == sum(10 + (int(p["metadata"]["name"][1:]) % 3) * 10 for p in won)


def test_concurrent_binds_across_nodes(kube, extender_factory):
    ext = extender_factory(identity_wait_seconds=0)  # capacity only: the identity rule would refuse most binds
    for n in range(4):
        add_gpu_node(kube, f"gpu-{n}", gpus=2)
    pods = [create_pod(kube, pod(f"q{i:02d}", compute=25, memory=1000)) for i in range(40)]
    wait_for(lambda: len(ext.service.pods) == 40 and len(ext.service.ledger.node_names()) == 4, 10, "cache")
    barrier = threading.Barrier(8)

    def bind(i: int) -> str:
        if i < 8:
            barrier.wait()
        return str(ext.post("bind", bind_body(pods[i], f"gpu-{i % 4}")).json()["Error"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        errors = list(pool.map(bind, range(40)))
    assert errors.count("") == 32  # 4 nodes x 2 GPUs x 4 slices of 25 %
    for n in range(4):
        assert all(g.used_compute == 100 for g in ext.service.ledger.gpus_of(f"gpu-{n}"))


def test_restart_mid_stream_rebuilds_the_same_ledger(kube, extender_factory):
    for n in range(3):
        add_gpu_node(kube, f"gpu-{n}", gpus=2, memory=8000)
    first = extender_factory(identity_wait_seconds=0)  # the ledger only: no kubelet serves these pods
    pods = [create_pod(kube, pod(f"r{i:02d}", compute=20 + 10 * (i % 4), memory=500 + 100 * i)) for i in range(30)]
    wait_for(lambda: len(first.service.pods) == 30, 10, "watch")
    stop = threading.Event()
    results: list[str] = []

    def stream() -> None:
        for i, p in enumerate(pods):
            if stop.is_set():
                break
            results.append(first.post("bind", bind_body(p, f"gpu-{i % 3}")).json()["Error"])

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: len(results) >= 10, 20, "some binds")
    second = extender_factory()  # a new process starts while binds go on
    stop.set()
    t.join(30)
    first.stop()  # the old one is gone; nothing else writes
    assert results.count("") >= 10
    expected = first.service.ledger_snapshot()
    wait_for(lambda: second.service.ledger_snapshot() == expected, 10, "the rebuilt ledger to match")
    third = extender_factory()  # and a cold start from scratch
    assert third.service.ledger_snapshot() == expected
    assert third.service.ready


def test_binds_on_unready_extender_fail(kube):
    add_gpu_node(kube, "gpu-0")
    kube.create(PODS, pod("p"))
    r = start_extender(None, wait_ready=False)  # no cache was ever listed
    try:
        assert "not ready" in r.post("bind", bind_body(pod("p"), "gpu-0")).json()["Error"]
        assert "not ready" in r.post("filter", filter_body(pod("p"), ["gpu-0"])).json()["Error"]
        assert r.http.get(r.url + "/readyz").status_code == 503
    finally:
        r.stop()


def test_node_deleted_releases_everything(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    p = create_pod(kube, pod("p"))
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    assert ext.service.ledger.holding(p["metadata"]["uid"]) is not None
    kube.delete("/api/v1/nodes/gpu-0")
    wait_for(lambda: not ext.service.ledger.has_node("gpu-0"), 5, "node removal")
    assert ext.service.ledger.holding(p["metadata"]["uid"]) is None
    # the node comes back: the pod (still there, still assigned) is counted again
    kube.create("/api/v1/nodes", node("gpu-0"))
    wait_for(lambda: ext.service.ledger.holding(p["metadata"]["uid"]) is not None, 5, "re-hold")
    assert ext.service.ready


def test_pod_deleted_or_finished_frees(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    a = create_pod(kube, pod("a", compute=50))
    b = create_pod(kube, pod("b", compute=50))
    for p in (a, b):
        assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
        kubelet_took(kube, p)
    assert ext.service.ledger.gpu("GPU-gpu-0-0").used_compute == 100
    kube.delete(f"{PODS}/a")
    wait_for(lambda: ext.service.ledger.gpu("GPU-gpu-0-0").used_compute == 50, 5, "delete frees")
    kube.patch(f"{PODS}/b", {"status": {"phase": "Succeeded"}})
    wait_for(lambda: ext.service.ledger.gpu("GPU-gpu-0-0").used_compute == 0, 5, "finish frees")


def test_gpu_removed_from_gpunode_releases_its_holders(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=2)
    p = create_pod(kube, pod("p", count=2))
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    kube.patch("/apis/gpupool.io/v1alpha1/gpunodes/gpu-0", {"status": gpunode("gpu-0", gpus=1)["status"]})
    wait_for(lambda: ext.service.ledger.holding(p["metadata"]["uid"]) is None, 5, "release")
    assert p["metadata"]["uid"] in ext.service.unplaced
    assert ext.service.ready  # a valid assignment on a missing GPU is not a forgery
