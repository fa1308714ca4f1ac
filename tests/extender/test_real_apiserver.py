"""The extender against a real kube-apiserver: bind writes the signed assignment and creates the Binding.

One control plane for the module (etcd + kube-apiserver + KCM, no kwok; tests/controller/real_api.py).
The extender is built exactly as `gpupool-extender` builds it (`extender.main.build(settings)` connecting
with a ServiceAccount token kubeconfig, its list+watch threads, the FastAPI app on uvicorn in a thread) and is
driven over HTTP. Nodes and GPUNodes are created through the API; pods carry `schedulerName:
gpupool-scheduler` (no gpupool scheduler runs, so only our /bind ever binds them).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from e2e.polling import wait_for
from e2e.processes import free_port
from extender.app import create_app
from extender.main import Extender, build
from extender.settings import ExtenderSettings
from gpupool import assignment, resources, timefmt
from tests.controller.real_api import RealAPI, gpu_pod, skip_without_binaries

GPU_MIB = 16384


@dataclass
class Running:
    extender: Extender
    server: uvicorn.Server
    thread: threading.Thread
    url: str
    http: httpx.Client

    @property
    def service(self) -> Any:
        return self.extender.service

    def post(self, verb: str, body: Any) -> httpx.Response:
        return self.http.post(f"{self.url}/{verb}", json=body)

    def pool(self) -> dict[str, Any]:
        r = self.http.get(f"{self.url}/debug/pool")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def stop(self) -> None:
        """Graceful, as on SIGTERM: the listener closes, requests in flight finish, the watches stop."""
        self.server.should_exit = True
        self.thread.join(15)
        self.extender.stop()
        self.http.close()


def start_extender(real: RealAPI, *, wait_ready: bool = True) -> Running:
    kubeconfig = real.kubeconfigs.get("gpupool-extender") or real.service_account("gpupool-extender")
    # identity_wait_seconds=0: no kubelet runs here, nothing would ever take the bound pods' devices, and these
    # tests bind many pods of one slot count to one node; the identity rule has its own tests (test_identity.py)
    settings = ExtenderSettings(  # type: ignore[call-arg]
        _cli_parse_args=False, kubeconfig=str(kubeconfig), signing_key_file=str(real.key_file), in_cluster=False,
        identity_wait_seconds=0,
    )  # fmt: skip
    ext = build(settings)  # connects to the API server like the entry point does
    app = create_app(ext.service, url_prefix=settings.url_prefix, max_body_bytes=settings.max_body_bytes)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 15, "uvicorn to start", 0.02)
    ext.start()
    running = Running(ext, server, thread, f"http://127.0.0.1:{port}", httpx.Client(timeout=60))
    if wait_ready:
        wait_for(lambda: running.http.get(f"{running.url}/readyz").status_code == 200, 30, "/readyz 200", 0.05)
    return running


@pytest.fixture(scope="module")
def real(request: pytest.FixtureRequest) -> Iterator[RealAPI]:
    skip_without_binaries()
    api = RealAPI.start("extender")
    failed_before = request.session.testsfailed
    try:
        api.service_account("gpupool-extender")
        yield api
    finally:
        api.down(failed=request.session.testsfailed > failed_before)


@pytest.fixture(scope="module")
def ext(real: RealAPI) -> Iterator[Running]:
    running = start_extender(real)
    yield running
    running.stop()


@pytest.fixture
def ns(real: RealAPI) -> str:
    return real.namespace("x")


def node_in_pool(real: RealAPI, ext: Running, gpus: int) -> str:
    name = f"egpu-{secrets.token_hex(3)}"
    real.gpu_node(name, gpus=gpus, memory_mib=GPU_MIB)
    wait_for(lambda: ext.service.ledger.has_node(name), 15, f"the extender to see {name}", 0.05)
    return name


def pool_pod(real: RealAPI, ns: str, name: str, **kw: Any) -> dict[str, Any]:
    body = gpu_pod(name, **kw)
    body["spec"]["schedulerName"] = resources.SCHEDULER_NAME
    return real.create_pod(ns, body)


def bind_args(pod: dict[str, Any], node: str) -> dict[str, Any]:
    meta = pod["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}


def signed_assignment(real: RealAPI, pod: dict[str, Any]) -> assignment.Assignment:
    text = (pod["metadata"].get("annotations") or {}).get(resources.ASSIGNMENT)
    assert text, f"pod {pod['metadata']['name']} has no assignment"
    record = assignment.verify(text, real.key)
    assert record.pod == pod["metadata"]["uid"]
    return record


def comparable(pool: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": pool["nodes"], "holdings": pool["holdings"]}


def check_against_api(real: RealAPI, pool: dict[str, Any], namespaces: list[str]) -> None:
    """Every bound pod holds a valid assignment for its node that the ledger holds too; no GPU is over
    capacity; no slot is used twice."""
    holdings = pool["holdings"]
    slots: Counter[tuple[str, str]] = Counter()
    for ns in namespaces:
        for pod in real.pods(ns):
            uid, node = pod["metadata"]["uid"], pod["spec"].get("nodeName")
            has = resources.ASSIGNMENT in (pod["metadata"].get("annotations") or {})
            if not node:
                assert not has and uid not in holdings, f"unbound pod {pod['metadata']['name']} holds slices"
                continue
            record = signed_assignment(real, pod)
            assert record.node == node
            assert holdings[uid]["node"] == node
            assert holdings[uid]["slices"] == [s.to_json() for s in record.slices]
            for s in record.slices:
                slots[(s.node, s.slot)] += 1
    assert all(n == 1 for n in slots.values()), [k for k, n in slots.items() if n > 1]
    for node in pool["nodes"].values():
        for g in node["gpus"]:
            assert g["used_compute"] <= 100 and g["used_memory_mib"] <= g["memory_mib"], g
            assert len(g["slots"]) == len(set(g["slots"]))


# --- bind -----------------------------------------------------------------------------------------------


def test_bind_writes_the_signed_assignment_and_creates_the_binding(real: RealAPI, ext: Running, ns: str) -> None:
    node = node_in_pool(real, ext, 2)
    pod = pool_pod(real, ns, "one", count=2, compute=30, memory=2048)
    filtered = ext.post("filter", {"Pod": pod, "NodeNames": [node]}).json()
    assert filtered["NodeNames"] == [node] and not filtered["Error"], filtered
    answer = ext.post("bind", bind_args(pod, node))
    assert answer.status_code == 200 and answer.json() == {"Error": ""}, answer.text

    stored = real.pod(ns, "one")
    assert stored["spec"]["nodeName"] == node  # the Binding was created
    record = signed_assignment(real, stored)
    assert record.node == node and len(record.slices) == 2
    assert len({s.gpu for s in record.slices}) == 2  # distinct physical GPUs
    assert all(
        s.compute == 30 and s.memory_mib == 2048 and s.node == node and not s.remote_for(node) for s in record.slices
    )
    pool = ext.pool()
    assert pool["holdings"][stored["metadata"]["uid"]]["node"] == node

    # idempotent: the same bind again is a success that changes nothing
    text = stored["metadata"]["annotations"][resources.ASSIGNMENT]
    again = ext.post("bind", bind_args(pod, node))
    assert again.json() == {"Error": ""}, again.text
    assert real.pod(ns, "one")["metadata"]["annotations"][resources.ASSIGNMENT] == text
    assert comparable(ext.pool()) == comparable(pool)
    # a bind to another node is refused (already bound), nothing moves
    other = ext.post("bind", bind_args(pod, "elsewhere")).json()["Error"]
    assert "already bound" in other, other
    check_against_api(real, ext.pool(), [ns])


def test_concurrent_binds_onto_one_node_never_over_allocate(real: RealAPI, ext: Running, ns: str) -> None:
    node = node_in_pool(real, ext, 2)  # 2 GPUs x 100 compute: 6 slices of 15 per GPU, 12 in all
    pods = [pool_pod(real, ns, f"c{i:02d}", count=1, compute=15, memory=1024) for i in range(30)]
    wait_for(lambda: all(p["metadata"]["uid"] in ext.service.pods for p in pods), 15, "the pods in the cache", 0.05)
    with ThreadPoolExecutor(30) as pool, httpx.Client(timeout=60) as http:
        barrier = threading.Barrier(30)

        def bind(p: dict[str, Any]) -> str:
            barrier.wait()
            r = http.post(f"{ext.url}/bind", json=bind_args(p, node))
            assert r.status_code == 200, r.text
            return str(r.json()["Error"])

        errors = list(pool.map(bind, pods))
    ok = [p["metadata"]["name"] for p, e in zip(pods, errors, strict=True) if not e]
    assert len(ok) == 12, (ok, [e for e in errors if e])
    assert all("no longer fits" in e for e in errors if e), [e for e in errors if e]
    snapshot = ext.pool()
    check_against_api(real, snapshot, [ns])
    gpus = snapshot["nodes"][node]["gpus"]
    assert [g["used_compute"] for g in gpus] == [90, 90], gpus
    bound = {p["metadata"]["name"] for p in real.pods(ns) if p["spec"].get("nodeName") == node}
    assert bound == set(ok)


def test_restart_in_a_stream_of_binds_rebuilds_the_same_ledger(real: RealAPI, ns: str) -> None:
    first = start_extender(real)
    node = node_in_pool(real, first, 4)
    pods = [pool_pod(real, ns, f"s{i:02d}", count=1, compute=10, memory=512) for i in range(40)]
    wait_for(lambda: all(p["metadata"]["uid"] in first.service.pods for p in pods), 15, "pods in the cache", 0.05)
    target = {"url": first.url}
    results: dict[str, str] = {}
    done = threading.Event()

    def stream() -> None:  # kube-scheduler binding one pod after another, retrying what failed
        with httpx.Client(timeout=30) as http:
            for p in pods:
                name = p["metadata"]["name"]
                for _ in range(200):
                    try:
                        r = http.post(f"{target['url']}/bind", json=bind_args(p, node))
                        results[name] = str(r.json()["Error"])
                        break
                    except httpx.HTTPError as exc:  # the extender is down: the scheduler retries
                        results[name] = f"down: {exc}"
                        time.sleep(0.05)
        done.set()

    worker = threading.Thread(target=stream, name="bind-stream", daemon=True)
    worker.start()
    second: Running | None = None
    try:
        wait_for(lambda: sum(1 for e in results.values() if e == "") >= 15, 30, "15 binds", 0.01)
        first.stop()  # in the middle of the stream
        before = first.service.snapshot()
        assert before["inflight"] == [], before["inflight"]
        bound_before = sum(1 for e in results.values() if e == "")
        assert 15 <= bound_before < 40, bound_before

        second = start_extender(real)  # rebuilds from Nodes, GPUNodes and the pods' signed assignments
        rebuilt = second.pool()
        assert rebuilt["readiness"]["ready"] is True, rebuilt["readiness"]
        assert comparable(rebuilt) == comparable(before)

        target["url"] = second.url  # the stream goes on against the new process
        assert done.wait(60), f"the stream did not finish: {results}"
        assert all(e == "" for e in results.values()), {k: v for k, v in results.items() if v}
        final = second.pool()
        check_against_api(real, final, [ns])
        assert len([u for u, h in final["holdings"].items() if h["node"] == node]) == 40
    finally:
        done.wait(5)
        if second is not None:
            second.stop()


def test_forged_assignment_is_quarantined_and_scheduling_goes_on(real: RealAPI, ext: Running, ns: str) -> None:
    """Issue 11 finding 2: one untrusted pod is named in /readyz, its claim stays held, readiness stays true."""
    node = node_in_pool(real, ext, 1)
    probe = pool_pod(real, ns, "honest", count=1, compute=10, memory=512)
    assert ext.post("bind", bind_args(probe, node)).json() == {"Error": ""}
    honest = signed_assignment(real, real.pod(ns, "honest"))
    pod = gpu_pod("forger", count=1, compute=100, memory=GPU_MIB)
    pod["spec"]["schedulerName"] = resources.SCHEDULER_NAME
    created = real.create_pod(ns, pod)
    uid = created["metadata"]["uid"]
    forged = assignment.Assignment(uid, node, honest.slices, timefmt.now_rfc3339()).signed(b"not-the-key")
    real.core.patch_namespaced_pod("forger", ns, {"metadata": {"annotations": {
        resources.ASSIGNMENT: forged.to_annotation()}}})  # fmt: skip

    def quarantined() -> httpx.Response | None:
        r = ext.http.get(f"{ext.url}/readyz")
        return r if uid in r.json().get("problems", {}) else None

    r = wait_for(quarantined, 15, "the forged pod in /readyz", 0.05)
    assert r.status_code == 200, r.text
    assert "signature" in r.json()["problems"][uid] and f"{ns}/forger" in r.text, r.text
    # scheduling goes on for everyone else
    other = pool_pod(real, ns, "goes-on", count=1, compute=10, memory=512)
    assert ext.post("bind", bind_args(other, node)).json() == {"Error": ""}
    real.delete_pod(ns, "forger")
    wait_for(lambda: not ext.http.get(f"{ext.url}/readyz").json()["problems"], 15, "quarantine lifted", 0.05)
