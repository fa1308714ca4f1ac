"""Fixtures of the extender tests: a fake API server (kmock), the extender over real HTTP, object makers.

Every test in this directory is marked `extender`. The API server is `FakeKube`
(kmock's emulator with resourceVersions, the binding subresource and fault
injection, see fakekube.py); the extender runs exactly as in production (settings ->
`build` -> watch threads -> FastAPI app on uvicorn on a free loopback port).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from e2e.polling import wait_for
from extender.app import create_app
from extender.main import Extender, build
from extender.settings import ExtenderSettings
from tests.extender.fakekube import FakeKube

KEY = b"test-signing-key-0123456789"
#: extenders currently running; the object helpers wait until each has seen what they created
RUNNING: list[Any] = []
GPUNODES = "/apis/gpupool.io/v1alpha1/gpunodes"


# --- object makers -------------------------------------------------------------------------------


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def gpunode(name: str, gpus: int = 2, memory: int = 16384, model: str = "A100", unhealthy: tuple[int, ...] = (),
            disabled: tuple[int, ...] = (), endpoint: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A GPUNode as its agent publishes it; `endpoint` None = `<name>.agents:9403`, '' = none."""
    items = [
        {"uuid": f"GPU-{name}-{i}", "index": i, "model": model, "memoryMiB": memory,
         "health": "Unhealthy" if i in unhealthy else "Healthy"}
        for i in range(gpus)
    ]  # fmt: skip
    return {
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": name},
        "spec": {"disabledGPUs": [f"GPU-{name}-{i}" for i in disabled]},
        "status": {"gpus": items, "agentEndpoint": f"{name}.agents:9403" if endpoint is None else endpoint},
    }


def pod(
    name: str,
    *,
    namespace: str = "default",
    count: int | None = 1,
    compute: int | None = 30,
    memory: int | None = 1024,
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
    resource_prefix: str = "gpupool.io",
    priority: int | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if count is not None:
        limits[f"{resource_prefix}/gpu"] = count
    if compute is not None:
        limits[f"{resource_prefix}/gpu-compute"] = compute
    if memory is not None:
        limits[f"{resource_prefix}/gpu-memory"] = memory
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}"}
    if annotations:
        meta["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "schedulerName": "gpupool-scheduler",
        "containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits}}],
    }
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}}


# --- the fake API server and the extender --------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    k = FakeKube()
    try:
        yield k
    finally:
        k.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningExtender:
    extender: Extender
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    http: httpx.Client

    @property
    def service(self) -> Any:
        return self.extender.service

    def post(self, verb: str, body: Any = None, *, content: bytes | None = None, **kw: Any) -> httpx.Response:
        if content is not None:
            return self.http.post(f"{self.url}/{verb}", content=content, **kw)
        return self.http.post(f"{self.url}/{verb}", json=body, **kw)

    def stop(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)
        self.server.should_exit = True
        self.thread.join(10)
        self.extender.stop()
        self.http.close()


def start_extender(
    kube: FakeKube | None, *, prefix: str = "", wait_ready: bool = True, key: Any = KEY, **settings: Any
) -> RunningExtender:
    cfg = ExtenderSettings(_cli_parse_args=False, url_prefix=prefix, **settings)  # type: ignore[call-arg]
    api = kube.client() if kube is not None else None
    if api is None:
        from tests.extender.stubs import StubAPI

        api = StubAPI()
    ext = build(cfg, api=api, key=key)
    app = create_app(ext.service, url_prefix=cfg.url_prefix, max_body_bytes=cfg.max_body_bytes)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "uvicorn to start")
    ext.start()
    if wait_ready and kube is not None:
        wait_for(lambda: ext.service.ready, 10, "the extender to become ready")
    base = f"http://127.0.0.1:{port}" + (("/" + prefix.strip("/")) if prefix.strip("/") else "")
    running = RunningExtender(ext, base, server, thread, httpx.Client(timeout=30))
    if kube is not None:
        RUNNING.append(running)
    return running


@pytest.fixture
def extender_factory(kube: FakeKube) -> Iterator[Callable[..., RunningExtender]]:
    started: list[RunningExtender] = []

    def make(**kw: Any) -> RunningExtender:
        r = start_extender(kube, **kw)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def ext(extender_factory: Callable[..., RunningExtender]) -> RunningExtender:
    return extender_factory()


def add_gpu_node(kube: FakeKube, name: str, **kw: Any) -> None:
    kube.create("/api/v1/nodes", node(name))
    kube.create(GPUNODES, gpunode(name, **kw))
    for r in list(RUNNING):
        wait_for(lambda r=r: r.service.ledger.has_node(name), 10, f"extender to see node {name}")


def create_pod(kube: FakeKube, p: dict[str, Any]) -> dict[str, Any]:
    ns = p["metadata"]["namespace"]
    created = kube.create(f"/api/v1/namespaces/{ns}/pods", p)
    uid = created["metadata"]["uid"]
    for r in list(RUNNING):
        wait_for(lambda r=r: uid in r.service.pods, 10, f"extender to see pod {uid}")
    return created


def kubelet_took(kube: FakeKube, p: dict[str, Any]) -> None:
    """What a node's kubelet reports once it has taken a bound pod's devices: the pod is Running. Waits until
    every running extender no longer counts the pod as unserved (gpupool.identity)."""
    m = p["metadata"]
    kube.patch(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", {"status": {"phase": "Running"}})
    for r in list(RUNNING):
        wait_for(
            lambda r=r: all(m["uid"] not in pods for pods in r.service.unserved.values()),
            10,
            f"extender to see pod {m['name']} served",
        )


def filter_body(p: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """Exactly what kube-scheduler sends with nodeCacheCapable: true."""
    return {"Pod": p, "Nodes": None, "NodeNames": names}


def bind_body(p: dict[str, Any], node_name: str) -> dict[str, Any]:
    m = p["metadata"]
    return {"PodName": m["name"], "PodNamespace": m["namespace"], "PodUID": m["uid"], "Node": node_name}
