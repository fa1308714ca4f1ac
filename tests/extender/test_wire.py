"""The extender's HTTP contract, with bodies shaped exactly as kube-scheduler sends them."""

from __future__ import annotations

import json

import pytest

from extender import wire
from gpupool import resources
from tests.extender.conftest import (
    add_gpu_node,
    bind_body,
    create_pod,
    filter_body,
    gpunode,
    kubelet_took,
    pod,
)

# kube-scheduler (pkg/scheduler/extender.go, nodeCacheCapable: true): Nodes is null, NodeNames lists the names
FILTER_NODE_NAMES = """{"Pod":{"metadata":{"name":"train","namespace":"team-a","uid":"u-train",
"annotations":{"gpupool.io/queue":"team-a"}},"spec":{"schedulerName":"gpupool-scheduler","containers":[{"name":"main",
"image":"x","resources":{"limits":{"gpupool.io/gpu":"1","gpupool.io/gpu-compute":"30","gpupool.io/gpu-memory":"4096"},
"requests":{"gpupool.io/gpu":"1","gpupool.io/gpu-compute":"30","gpupool.io/gpu-memory":"4096"}}}]},
"status":{"phase":"Pending"}},"Nodes":null,"NodeNames":["gpu-0","gpu-1","cpu-0"]}"""


def test_filter_node_names_form(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=2, memory=16384)
    add_gpu_node(kube, "gpu-1", gpus=1, memory=2048)
    kube.create("/api/v1/nodes", {"metadata": {"name": "cpu-0"}})
    r = ext.post("filter", content=FILTER_NODE_NAMES.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert body["Nodes"] is None
    assert body["Error"] == ""
    assert body["NodeNames"] == ["gpu-0"]
    # gpu-1's only GPU has 2048 MiB: no freeing helps -> unresolvable, and it says so
    assert "gpu-1" in body["FailedAndUnresolvableNodes"]
    assert "4096" in body["FailedAndUnresolvableNodes"]["gpu-1"]
    assert "cpu-0" in body["FailedAndUnresolvableNodes"]
    assert "GPUNode" in body["FailedAndUnresolvableNodes"]["cpu-0"]


def test_filter_resolvable_failure_says_what_is_missing_shared_by_nodes(kube, ext):
    """The wire's reason is the node state's first clause, the same text for every node lacking the same thing
    (kube-scheduler's event counts nodes per text); the detail naming a GPU stays in `gpupool explain`."""
    for node in ("gpu-0", "gpu-1"):
        add_gpu_node(kube, node, gpus=1, memory=8192)
        big = create_pod(kube, pod(f"big-{node}", compute=80 if node == "gpu-0" else 90, memory=6000))
        assert ext.post("bind", bind_body(big, node)).json() == {"Error": ""}
    small = pod("small", compute=30, memory=4096)
    r = ext.post("filter", filter_body(small, ["gpu-0", "gpu-1"])).json()
    assert r["NodeNames"] == []
    reason = r["FailedNodes"]["gpu-0"]
    assert "30% compute" in reason and "4096 MiB" in reason and "GPU-" not in reason
    assert r["FailedNodes"]["gpu-1"] == reason  # largest free differs (20% vs 10%), the group does not
    service = ext.service
    detailed = service.placer.filter(resources.parse_pod(small), ["gpu-0"])
    assert "GPU-gpu-0-0"[:12] in detailed.failed["gpu-0"]


def test_filter_nodelist_form(kube, ext):
    add_gpu_node(kube, "gpu-0")
    nodes = {"metadata": {}, "items": [{"metadata": {"name": "gpu-0"}, "status": {}},
                                       {"metadata": {"name": "nope"}, "status": {}}]}  # fmt: skip
    r = ext.post("filter", {"Pod": pod("p"), "Nodes": nodes, "NodeNames": None})
    assert r.status_code == 200
    body = r.json()
    assert body["NodeNames"] is None
    assert [i["metadata"]["name"] for i in body["Nodes"]["items"]] == ["gpu-0"]
    assert "nope" in body["FailedAndUnresolvableNodes"]


def test_the_nodelist_form_echoes_node_objects_json_cannot_narrow(kube, ext):
    """The passing Node objects go back as sent, whatever JSON they hold: an integer beyond 64 bits (which the
    answer's encoder, orjson, refuses) and non-ASCII text. Same answer as the `json` encoder gave, never 500."""
    add_gpu_node(kube, "gpu-0")
    item = {"metadata": {"name": "gpu-0", "labels": {"zone": "zürich-1"}}, "status": {"capacity": {"x": 2**70}}}
    body = json.dumps({"Pod": pod("p"), "Nodes": {"items": [item]}, "NodeNames": None}).encode()
    r = ext.post("filter", content=body)
    assert r.status_code == 200, r.text
    assert r.json()["Nodes"]["items"] == [item]


def test_other_methods_on_a_verb_path_are_405(kube, ext):
    for verb in ("filter", "prioritize", "bind", "preempt"):
        r = ext.http.get(f"{ext.url}/{verb}")
        assert r.status_code == 405 and r.headers["allow"] == "POST", (verb, r.status_code)
    assert ext.http.post(ext.url + "/no-such-verb", content=b"{}").status_code == 404


def test_filter_both_null_means_no_nodes(kube, ext):
    r = ext.post("filter", {"Pod": pod("p"), "Nodes": None, "NodeNames": None}).json()
    assert r["NodeNames"] == [] and r["Error"] == ""


def test_prioritize_scores(kube, ext):
    add_gpu_node(kube, "empty", gpus=2)
    add_gpu_node(kube, "busy", gpus=2)
    add_gpu_node(kube, "tiny", gpus=1, memory=512)
    busy = create_pod(kube, pod("busy", compute=50, memory=4096))
    assert ext.post("bind", bind_body(busy, "busy")).json() == {"Error": ""}
    kubelet_took(kube, busy)  # else the identity rule holds "busy" back for a 1-slot pod (lowest score)
    # 45 % fills busy's used GPU to within 5 %: a near fit (fgdpp's pairing bands, docs/openb.md "Pairing")
    r = ext.post("prioritize", filter_body(pod("p", compute=45), ["empty", "busy", "tiny"]))
    assert r.status_code == 200
    scores = {h["Host"]: h["Score"] for h in r.json()}
    assert set(r.json()[0]) == {"Host", "Score"}
    assert all(0 <= s <= 10 for s in scores.values())
    assert scores["tiny"] == 0  # does not fit
    assert scores["busy"] > scores["empty"] >= 1  # the default policy prefers filling the used GPU


def test_pool_pod_passes_remote(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    add_gpu_node(kube, "nogpu", gpus=0)
    p = pod("remote", annotations={"gpupool.io/locality": "pool"})
    r = ext.post("filter", filter_body(p, ["gpu-0", "nogpu"])).json()
    assert r["NodeNames"] == ["gpu-0"] and not r["FailedNodes"]  # narrowed: the node prioritize ranks first
    ext.service.narrow_filter = False  # which nodes pass: the wide answer
    r = ext.post("filter", filter_body(p, ["gpu-0", "nogpu"])).json()
    assert sorted(r["NodeNames"]) == ["gpu-0", "nogpu"]
    scores = {h["Host"]: h["Score"] for h in ext.post("prioritize", filter_body(p, ["gpu-0", "nogpu"])).json()}
    assert scores["nogpu"] == 0 and scores["gpu-0"] >= 1
    local = ext.post("filter", filter_body(pod("local"), ["nogpu"])).json()
    assert local["NodeNames"] == [] and "nogpu" in local["FailedAndUnresolvableNodes"]


def test_pool_pod_gets_no_remote_slice_from_a_node_without_agent_endpoint(kube, ext):
    ext.service.narrow_filter = False  # which nodes pass: the wide answer (test_narrow_filter.py: the narrowed)
    add_gpu_node(kube, "silent", gpus=1, endpoint="")
    add_gpu_node(kube, "nogpu", gpus=0)
    p = pod("remote", annotations={"gpupool.io/locality": "pool"})
    r = ext.post("filter", filter_body(p, ["silent", "nogpu"])).json()
    assert r["NodeNames"] == ["silent"]  # its own GPU serves pods bound to it
    reason = {**r.get("FailedNodes", {}), **r.get("FailedAndUnresolvableNodes", {})}["nogpu"]
    assert "silent" in reason and "agentEndpoint" in reason
    add_gpu_node(kube, "far", gpus=1)
    r = ext.post("filter", filter_body(p, ["silent", "nogpu"])).json()
    assert sorted(r["NodeNames"]) == ["nogpu", "silent"]


def test_invalid_pod_fills_error(kube, ext):
    add_gpu_node(kube, "gpu-0")
    r = ext.post("filter", filter_body(pod("neg", compute=-5), ["gpu-0"]))
    assert r.status_code == 200
    assert "must not be negative" in r.json()["Error"]
    r = ext.post("filter", filter_body(pod("big", compute=300), ["gpu-0"]))
    assert "1..100" in r.json()["Error"]
    r = ext.post("prioritize", filter_body(pod("neg", compute=-5), ["gpu-0"]))
    assert r.status_code == 200 and r.json() == [{"Host": "gpu-0", "Score": 0}]


def test_alias_resource_fails_loudly(kube, ext):
    add_gpu_node(kube, "gpu-0")
    r = ext.post("filter", filter_body(pod("alias", resource_prefix="pool.kubernetes.io"), ["gpu-0"])).json()
    assert "pool.kubernetes.io/gpu" in r["Error"] and "webhook" in r["Error"]
    assert r["NodeNames"] == []


def test_bad_bodies_are_4xx(kube, ext):
    add_gpu_node(kube, "gpu-0")
    for verb in ("filter", "prioritize", "bind", "preempt"):
        assert ext.post(verb, content=b"{not json").status_code == 400, verb
        assert ext.post(verb, content=b"").status_code == 400, verb
        assert ext.post(verb, content=b"[]").status_code == 400, verb
        assert ext.post(verb, {}).status_code == 400, verb
    assert ext.post("filter", {"Pod": "x", "NodeNames": ["gpu-0"]}).status_code == 400
    assert ext.post("filter", {"Pod": {}, "NodeNames": "gpu-0"}).status_code == 400
    assert ext.post("bind", {"PodName": "a", "PodNamespace": "b", "PodUID": "", "Node": "n"}).status_code == 400
    # unknown keys are ignored, as Go's decoder does
    r = ext.post("filter", {"Pod": pod("p"), "NodeNames": ["gpu-0"], "Extra": 1})
    assert r.status_code == 200 and r.json()["NodeNames"] == ["gpu-0"]
    # the service survived all of it
    assert ext.http.get(ext.url + "/healthz").status_code == 200


def test_huge_body_is_413(kube, extender_factory):
    small = extender_factory(max_body_bytes=64 * 1024)
    names = [f"node-{i:07d}" for i in range(700_000)]  # ~10 MB
    payload = json.dumps(filter_body(pod("p"), names)).encode()
    assert len(payload) > 10_000_000
    r = small.post("filter", content=payload)
    assert r.status_code == 413
    default = extender_factory()
    assert default.post("filter", content=payload).status_code == 413  # the 8 MiB default
    assert default.http.get(default.url.rsplit("/", 0)[0] + "/healthz").status_code == 200


def test_unknown_pod_and_node_bind(kube, ext):
    add_gpu_node(kube, "gpu-0")
    r = ext.post("bind", {"PodName": "ghost", "PodNamespace": "default", "PodUID": "u-ghost", "Node": "gpu-0"})
    assert r.status_code == 200 and "ghost" in r.json()["Error"]
    p = create_pod(kube, pod("p"))
    r = ext.post("bind", bind_body(p, "not-a-node"))
    assert r.status_code == 200 and "not-a-node" in r.json()["Error"]
    assert kube.get("/api/v1/namespaces/default/pods/p")["metadata"].get("annotations") in (None, {})
    wrong_uid = {**bind_body(p, "gpu-0"), "PodUID": "other"}
    assert "uid" in ext.post("bind", wrong_uid).json()["Error"]


def test_url_prefix_and_probes(kube, extender_factory):
    add_gpu_node(kube, "gpu-0", gpus=1)
    e = extender_factory(prefix="/gpupool/v1")
    assert e.post("filter", filter_body(pod("p"), ["gpu-0"])).json()["NodeNames"] == ["gpu-0"]
    root = e.url.removesuffix("/gpupool/v1")
    assert e.http.post(root + "/filter", json=filter_body(pod("p"), ["gpu-0"])).status_code in (404, 405)
    assert e.http.get(root + "/healthz").text == "ok"
    ready = e.http.get(root + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    snap = e.http.get(root + "/debug/pool").json()
    assert "gpu-0" in snap["nodes"] and snap["readiness"]["ready"] is True
    metrics = e.http.get(root + "/metrics").text  # served at the root; the values: test_metrics_after_known_verbs
    assert "gpupool_extender_cache_nodes 1.0" in metrics and "gpupool_extender_cache_gpus 1.0" in metrics


#: pods of the built-in openb mix (gpupool/fragmentation.py): 7766, of which 1056 CPU-only and 4890 asking more
#: than 70 % of a GPU (every shape but the 12 of at most 65 %: 388+360+237+232+122+120+75+72+72+54+45+43 = 1820)
_OPENB_PODS, _CPU_ONLY, _OVER_70 = 7766, 1056, 4890


def test_metrics_after_known_verbs(kube, ext):
    """The values, not just the names: counters after known calls, ledger gauges after a bind."""
    add_gpu_node(kube, "gpu-0", gpus=1)
    registry = ext.service.metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    gpu = {"node": "gpu-0", "gpu": "GPU-gpu-0-0", "index": "0", "eligible": "true"}
    assert value("gpupool_gpu_allocated_compute_percent", **gpu) == 0
    # idle [100]: only the CPU-only tasks leave the GPU idle
    assert value("gpupool_pool_fragmentation_compute") == pytest.approx(100 * _CPU_ONLY / _OPENB_PODS)
    for _ in range(2):
        assert ext.post("filter", filter_body(pod("p"), ["gpu-0"])).json()["NodeNames"] == ["gpu-0"]
    assert ext.post("filter", content=b"{not json").status_code == 400
    p = create_pod(kube, pod("p", compute=30, memory=1024))
    assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    assert "no-such-node" in ext.post("bind", bind_body(create_pod(kube, pod("q")), "no-such-node")).json()["Error"]

    assert value("gpupool_extender_requests_total", verb="filter", outcome="ok") == 2
    assert value("gpupool_extender_requests_total", verb="filter", outcome="rejected") == 1
    assert value("gpupool_extender_requests_total", verb="bind", outcome="ok") == 2  # an answered Error is ok
    assert value("gpupool_extender_request_duration_seconds_count", verb="filter") == 3
    assert value("gpupool_extender_request_duration_seconds_count", verb="bind") == 2
    assert value("gpupool_extender_binds_total", result="ok") == 1
    assert value("gpupool_extender_binds_total", result="error") == 1
    assert value("gpupool_extender_bind_conflicts_total") == 0 and value("gpupool_extender_bind_rollbacks_total") == 0
    assert value("gpupool_extender_cache_nodes") == 1 and value("gpupool_extender_cache_gpus") == 1
    assert value("gpupool_extender_cache_holdings") == 1 and value("gpupool_extender_ready") == 1
    assert value("gpupool_gpu_allocated_compute_percent", **gpu) == 30
    assert value("gpupool_gpu_allocated_memory_mib", **gpu) == 1024
    # [70] free: CPU-only tasks and tasks over 70 % strand all 70
    assert value("gpupool_pool_fragmentation_compute") == pytest.approx(70 * (_CPU_ONLY + _OVER_70) / _OPENB_PODS)
    scraped = ext.http.get(ext.url + "/metrics").text
    assert 'gpupool_gpu_allocated_compute_percent{eligible="true",gpu="GPU-gpu-0-0",index="0",node="gpu-0"} 30.0' in (
        scraped
    )


def test_gpunode_changes_reach_filter(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    p = pod("p")
    assert ext.post("filter", filter_body(p, ["gpu-0"])).json()["NodeNames"] == ["gpu-0"]
    kube.patch(
        "/apis/gpupool.io/v1alpha1/gpunodes/gpu-0", {"status": gpunode("gpu-0", gpus=1, unhealthy=(0,))["status"]}
    )

    def failing() -> bool:
        return ext.post("filter", filter_body(p, ["gpu-0"])).json()["NodeNames"] == []

    from e2e.polling import wait_for

    wait_for(failing, 5, "the unhealthy GPU to stop receiving slices")
    kube.patch("/apis/gpupool.io/v1alpha1/gpunodes/gpu-0", {"status": gpunode("gpu-0", gpus=1)["status"],
                                                              "spec": {"disabledGPUs": ["GPU-gpu-0-0"]}})  # fmt: skip
    wait_for(lambda: ext.service.ledger.gpu("GPU-gpu-0-0").disabled, 5, "the disabled GPU")
    assert ext.post("filter", filter_body(p, ["gpu-0"])).json()["NodeNames"] == []
    kube.patch("/apis/gpupool.io/v1alpha1/gpunodes/gpu-0", {"spec": {"disabledGPUs": []}})
    wait_for(lambda: ext.post("filter", filter_body(p, ["gpu-0"])).json()["NodeNames"] == ["gpu-0"], 5, "re-enable")


def test_probe_listener_serves_probes_and_metrics_but_no_verbs(kube, ext):
    from fastapi.testclient import TestClient

    from extender.app import create_probe_app

    client = TestClient(create_probe_app(ext.service))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["ready"] is True
    assert b"gpupool_" in client.get("/metrics").content
    assert client.post("/filter", content=FILTER_NODE_NAMES).status_code == 404
    assert client.post("/bind", content=b"{}").status_code == 404


def test_failure_groups_keep_every_node_and_at_most_max_reasons_texts():
    """Every failing node stays in its map (kube-scheduler counts them and preempts only on the resolvable
    ones); beyond `MAX_REASONS` distinct texts the smallest groups share one; long texts are cut."""
    failed = {f"n{i}": f"reason {i % 20}" for i in range(200)}
    failed.update({f"big{i}": "common" for i in range(50)})
    unresolvable = {"u0": "x" * 1000, "u1": "x" * 1000}
    out_f, out_u = wire.failure_groups(failed, unresolvable)
    assert set(out_f) == set(failed) and set(out_u) == set(unresolvable)
    texts = set(out_f.values()) | set(out_u.values())
    assert len(texts) <= wire.MAX_REASONS and wire.OTHER_REASONS in texts
    assert out_f["big0"] == "common" and all(len(t) <= wire.MAX_REASON_CHARS for t in texts)
    assert wire.failure_groups({"a": "r1", "b": "r2"}, {}) == ({"a": "r1", "b": "r2"}, {})
