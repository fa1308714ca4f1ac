"""An in-memory API server for the extender tests: kmock's KubernetesEmulator, a bit more Kubernetes-like.

kmock (aiohttp) keeps objects as JSON and serves list, watch, get, create, merge-patch
and delete. On top of it this adds what the extender relies on:

* `metadata.resourceVersion` (a global counter) on every write, and the optimistic
  concurrency of a PATCH that carries `metadata.resourceVersion` (409 when stale);
* the `pods/<name>/binding` subresource (sets `spec.nodeName`; 409 when already bound);
* fault injection: `fail_binding` (pod names whose Binding gets 500) and
  `conflicts` (pod name -> how many of its next PATCHes get 409).

It runs on its own event loop in a thread, so synchronous code (the extender's
`kubernetes` client, httpx) can call it from the test thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Any

import aiohttp.web
from kmock import KubernetesEmulator, Server, action, resource

from extender.kube import KubeAPI

PODS = resource("", "v1", "pods")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message, "metadata": {}}  # fmt: skip
    return aiohttp.web.json_response(body, status=code)


class FakeKubeHandler(KubernetesEmulator):  # type: ignore[misc]
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = itertools.count(100)
        self.fail_binding: set[str] = set()
        #: pod names whose Binding is applied but answered with 500 (a reply lost on the way back)
        self.lose_binding_reply: set[str] = set()
        self.conflicts: dict[str, int] = {}
        self.bindings: list[tuple[str, str, str]] = []
        self.resources["gpupool.io/v1alpha1/gpunodes"] = {"namespaced": False, "kind": "GPUNode"}
        self.resources["gpupool.io/v1alpha1/gpuqueues"] = {"namespaced": False, "kind": "GPUQueue"}
        self.resources["v1/nodes"] = {"namespaced": False, "kind": "Node"}
        self.resources["v1/pods"] = {"namespaced": True, "kind": "Pod"}

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.subresource == "binding" and request.method == "POST":
            return await self._bind(request)
        if request.resource is not None and request.action in (action.CREATE, action.UPDATE):
            data = request.data if isinstance(request.data, dict) else None
            if data is not None:
                meta = data.setdefault("metadata", {})
                if request.action == action.UPDATE:
                    key = (request.resource, request.namespace, request.name)
                    pending = self.conflicts.get(request.name or "", 0)
                    if pending:
                        self.conflicts[request.name] = pending - 1
                        return _status(409, "Conflict", "injected conflict")
                    want = meta.get("resourceVersion")
                    if want is not None and key in self.objects and not self.objects[key].deleted:
                        have = (self.objects[key].get("metadata") or {}).get("resourceVersion")
                        if str(want) != str(have):
                            return _status(409, "Conflict", f"resourceVersion {want} is stale (now {have})")
                meta["resourceVersion"] = str(next(self.rv))
                if request.action == action.CREATE and request.resource == PODS:
                    meta.setdefault("uid", f"uid-{meta.get('namespace') or request.namespace}-{meta.get('name')}")
                    meta.setdefault("namespace", request.namespace)
        return await super()._handle(request)  # type: ignore[no-any-return]

    async def _bind(self, request: Any) -> aiohttp.web.StreamResponse:
        key = (PODS, request.namespace, request.name)
        if request.name in self.fail_binding:
            return _status(500, "InternalError", "injected binding failure")
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return _status(404, "NotFound", f"pods {request.name!r} not found")
            obj = self.objects[key]
            if (obj.get("spec") or {}).get("nodeName"):
                return _status(409, "Conflict", f"pod {request.name} is already assigned to a node")
            node = ((request.data or {}).get("target") or {}).get("name")
            # like the real registry: the Binding's annotations are copied onto the pod in the same update
            annotations = ((request.data or {}).get("metadata") or {}).get("annotations") or {}
            meta: dict[str, Any] = {"resourceVersion": str(next(self.rv))}
            if annotations:
                meta["annotations"] = annotations
            obj.patch({"spec": {"nodeName": node}, "metadata": meta})
            self.bindings.append((request.namespace, request.name, node))
            await self._buses[PODS].put({"type": "MODIFIED", "object": obj.raw})
        if request.name in self.lose_binding_reply:
            return _status(500, "InternalError", "injected: binding applied, reply lost")
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201},
                                         status=201)  # fmt: skip


class FakeKube:
    """The fake API server on a background event loop; `api` is a raw client for the test side."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fakekube", daemon=True)
        self.thread.start()
        self.handler: FakeKubeHandler
        self.url = asyncio.run_coroutine_threadsafe(self._enter(), self.loop).result(10)
        self.api = self.client()

    async def _enter(self) -> str:
        self._handler_cm = FakeKubeHandler()
        self.handler = await self._handler_cm.__aenter__()
        self._server_cm = Server(self.handler)
        server = await self._server_cm.__aenter__()
        return str(server.url).rstrip("/")

    async def _exit(self) -> None:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:  # open watch streams first, or the server waits for them
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for cm in (self._server_cm, self._handler_cm):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cm.__aexit__(None, None, None), 3)
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._exit(), self.loop).result(15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()

    def client(self) -> KubeAPI:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return KubeAPI(client.ApiClient(configuration), timeout=10)

    # --- object helpers (through HTTP, like any client) ------------------------------------------

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.api.request("POST", path, body=obj, content_type="application/json")  # type: ignore[no-any-return]

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.api.request(  # type: ignore[no-any-return]
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    def delete(self, path: str) -> None:
        self.api.request("DELETE", path)

    def get(self, path: str) -> dict[str, Any]:
        return self.api.request("GET", path)  # type: ignore[no-any-return]
