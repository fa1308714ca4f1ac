"""The controller's API-server I/O: one thin class over the `kubernetes` client's typed APIs (run in threads).

The connection (kubeconfig or in-cluster, pooled) comes from `kubeio.client.load_api_client`.

Everything the controller writes goes through `Kube`, so tests can point it at kmock or a real
apiserver, and the decision logic (gpupool.queues / gpupool.preemption) never sees a client.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpupool import objects, resources
from gpupool.timefmt import now_rfc3339
from kubeio.client import JSON, MERGE_PATCH, POOL_SIZE, ApiError, KubeClient, load_api_client
from kubeio.paths import GPUNODES, GPUQUEUES, NAMESPACES, NODES, PODS

__all__ = ["GPUNODES", "GPUQUEUES", "NAMESPACES", "NODES", "PODS", "Kube", "load_api_client"]

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

T = TypeVar("T")


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.raw = KubeClient(api_client)  # raw JSON calls (owners of any kind), the pod watch
        #: path -> the resourceVersion of its last list: the watches (`controller.handlers.startup`) start there
        self.listed_at: dict[str, str] = {}
        #: the client blocks, so calls run in threads: its own pool, as large as the connection pool, so the
        #: cycle's parallel writes (`Controller._concurrently`) are not capped by asyncio's small default one
        self._threads = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="gpupool-api")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    # --- reads ---------------------------------------------------------------------------------------

    async def _list(self, path: str, page_size: int = 500) -> list[dict[str, Any]]:
        """Every object at `path` as raw JSON, paged; `listed_at[path]` keeps the list's resourceVersion."""
        items, self.listed_at[path] = await self._run(self.raw.list, path, page_size=page_size)
        return items

    async def list_pods(self, page_size: int = 500) -> list[dict[str, Any]]:
        """Every pod of the cluster as raw JSON, paged (no client models: at 5,000 nodes the typed, unpaged list
        built tens of thousands of them)."""
        return await self._list(PODS, page_size)

    @property
    def pods_listed_at(self) -> str:
        return self.listed_at.get(PODS, "")

    async def list_nodes(self) -> list[dict[str, Any]]:
        return await self._list(NODES)

    async def list_namespaces(self) -> list[dict[str, Any]]:
        return await self._list(NAMESPACES)

    async def list_custom(self, plural: str) -> list[dict[str, Any]]:
        return await self._list({objects.GPUNODE_PLURAL: GPUNODES, objects.GPUQUEUE_PLURAL: GPUQUEUES}[plural])

    # --- writes --------------------------------------------------------------------------------------

    async def remove_gate(
        self, namespace: str, name: str, uid: str, gates: list[dict[str, Any]], queue: str | None = None
    ) -> None:
        """Remove the admission gate and, given `queue`, record it as `gpupool.io/queue` in the same write, so the
        pod is never ungated with another queue recorded (one write, one webhook call and one watch event a pod:
        issue 16). A merge patch naming the pod's uid: the API server refuses it (uid is immutable) when the name
        now holds another pod; other annotations are kept."""
        rest = [g for g in gates if g.get("name") != resources.ADMISSION_GATE]
        meta: dict[str, Any] = {"uid": uid}
        if queue:
            meta["annotations"] = {resources.QUEUE: queue}
        body = {"metadata": meta, "spec": {"schedulingGates": rest}}
        await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}", body, MERGE_PATCH)

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}", body, MERGE_PATCH)

    async def set_pod_condition(self, namespace: str, name: str, condition: Mapping[str, Any]) -> None:
        """Set one condition of the pod's status (strategic merge: other conditions are kept, by type)."""
        body = {"status": {"conditions": [dict(condition)]}}
        await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", body, STRATEGIC_MERGE_PATCH)

    async def _patch(self, path: str, body: Mapping[str, Any], content_type: str) -> None:
        """One patch as raw JSON, its answer (the whole pod) read and dropped: the generated client would build
        a `V1Pod` model of it, which costs more than the write (the gate removal and the admitted condition of
        every pod of a burst, issue 16). Raises `ApiError` (its `status`: 422 for a uid that no longer matches)."""
        await self._run(self.raw.request, "PATCH", path, body=dict(body), content_type=content_type)

    async def get_object(self, path: str) -> dict[str, Any] | None:
        """GET one object by its API path (a pod's owner, `controller.workloads`); None when it is gone (404)."""
        try:
            data = await self._run(self.raw.request, "GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], data)

    async def evict(self, namespace: str, name: str, *, dry_run: bool = False) -> bool:
        """Evict through the Eviction API; False when refused (a PodDisruptionBudget: 429). `dry_run`: only
        ask whether it would be allowed (a pod group is evicted whole or not at all)."""
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
        if dry_run:
            body.delete_options = client.V1DeleteOptions(dry_run=["All"])
        try:
            await self._run(self.core.create_namespaced_pod_eviction, name, namespace, body)
        except ApiException as exc:
            if exc.status == 429:
                return False
            if exc.status == 404:
                return True
            raise
        return True

    async def event(self, pod: Mapping[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.gpupool.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"),
                               "namespace": namespace, "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": "gpupool-controller"},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }  # fmt: skip
        path = f"/api/v1/namespaces/{namespace}/events"
        await self._run(self.raw.request, "POST", path, body=body, content_type=JSON)

    async def patch_status(self, plural: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status of a cluster-scoped gpupool object, as raw JSON: the generated client's
        argument validation and reply decoding cost more than the write itself (the GPUNode status writes of a
        1,000-pod burst, issue 16); raises `ApiError`."""
        path = f"/apis/{objects.GROUP}/{objects.VERSION}/{plural}/{name}/status"
        await self._run(self.raw.request, "PATCH", path, body={"status": dict(status)}, content_type=MERGE_PATCH)
