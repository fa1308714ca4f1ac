"""The few API calls the node agent makes, on plain dicts (the transport is `kubeio.client`).

Objects stay plain API JSON dicts, as `gpupool.objects` expects, and nothing is deserialised into the
`kubernetes` client's models (cheap for hundreds of pods). Every call is independent: there is no lock
around API calls, so concurrent Allocates for different pods run their API writes in parallel.

Only JSON merge patches are used (`application/merge-patch+json`): they touch just the keys they name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gpupool import objects
from kubeio.client import JSON, MERGE_PATCH, KubeClient, load_api_client
from kubeio.client import ApiError as KubeError
from kubeio.paths import GPUNODES, PODS

__all__ = ["GPUNODES", "MERGE_PATCH", "Kube", "KubeError", "load_api_client"]


class Kube(KubeClient):
    """The node agent's API calls, on plain dicts."""

    def __init__(self, api_client: Any, timeout_s: float = 10.0) -> None:
        super().__init__(api_client, timeout_s)

    # --- pods --------------------------------------------------------------------------------------

    @staticmethod
    def _node_selector(node: str) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={node}"}

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        """Pods bound to `node` and the list's resourceVersion."""
        return self.list(PODS, self._node_selector(node), timeout=self.timeout)

    def watch_pods(
        self, node: str, resource_version: str, timeout_s: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Watch events (type, object) of pods bound to `node`; ends when the server closes the stream.

        Raises `KubeError(410)` when the resourceVersion is too old (the caller re-lists).
        """
        for event in self.watch(PODS, resource_version, self._node_selector(node), timeout_s):
            yield str(event.get("type") or ""), event.get("object") or {}

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> Any:
        return self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            body={"metadata": {"annotations": dict(annotations)}},
            content_type=MERGE_PATCH,
        )

    # --- GPUNodes and Nodes ------------------------------------------------------------------------

    def get_gpunode(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", f"{GPUNODES}/{name}"))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create_gpunode(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": objects.API_VERSION,
            "kind": "GPUNode",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {},
        }
        return dict(self.request("POST", GPUNODES, body=body, content_type=JSON))

    def patch_gpunode_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            self.request("PATCH", f"{GPUNODES}/{name}/status", body={"status": dict(status)}, content_type=MERGE_PATCH)
        )

    def patch_node_labels(self, name: str, labels: Mapping[str, str | None]) -> Any:
        return self.request(
            "PATCH", f"/api/v1/nodes/{name}", body={"metadata": {"labels": dict(labels)}}, content_type=MERGE_PATCH
        )
