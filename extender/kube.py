"""What the extender asks of the API server: read, patch and bind pods (the transport is `kubeio.client`).

Pods are read and written as the API server's JSON (dicts) and the Binding subresource is POSTed
directly: the generated `create_namespaced_binding` mis-decodes the reply (see `kubeio.client`).
The list+watch threads that feed the pool are `kubeio.reflector.Reflector`s over `NODES`, `GPUNODES`,
`PODS` and `GPUQUEUES` (reserved nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubeio.client import JSON, MERGE_PATCH, ApiError, KubeClient
from kubeio.paths import GPUNODES, GPUQUEUES, NODES, PODS

__all__ = ["GPUNODES", "GPUQUEUES", "MERGE_PATCH", "NODES", "PODS", "ApiError", "KubeAPI", "PodAPI"]


class PodAPI(Protocol):
    """What bind needs from the API server (the benchmark stubs exactly this boundary)."""

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]: ...

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None: ...


#: binds writing at once (their own thread limiter in `extender.app`): kube-scheduler gives up on a bind after its
#: extender timeout (5 s in the chart), so binds must not queue here behind the API server's latency; 32 queued a
#: 1,000-node burst past it, 256 drew 429s (docs/e2e.md, issue 16). The client keeps as many connections more
#: than its watches, so that none is opened per call (a TLS handshake each).
BIND_THREADS = 64
#: connections kept to the API server: every bind's, and the watches'
API_CONNECTIONS = BIND_THREADS + 8


class KubeAPI(KubeClient):
    """The extender's `PodAPI` on the shared transport (also what its Reflectors list and watch with)."""

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")  # type: ignore[no-any-return]

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body=patch, content_type=content_type
        )

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        """POST the Binding subresource ourselves (see the module docstring).

        The API server copies the Binding's annotations onto the pod in the same write that sets
        `spec.nodeName`, so the assignment and the binding land together or not at all.
        """
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid}
        if annotations:
            metadata["annotations"] = dict(annotations)
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body=body, content_type=JSON)
