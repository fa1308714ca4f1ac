"""A thin, dict-based client for the few API calls the node agent makes.

Built on the `kubernetes` package's `ApiClient` (kubeconfig, in-cluster config, TLS, tokens) but without its
model classes: objects stay plain API JSON dicts, as `gpupool.objects` expects, and nothing is deserialised
into models (cheap for hundreds of pods). Every call is independent: there is no lock around API calls, so
concurrent Allocates for different pods run their API writes in parallel.

Only JSON merge patches are used (`application/merge-patch+json`): they touch just the keys they name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from gpupool import objects

log = logging.getLogger(__name__)

GPUNODES = f"/apis/{objects.GROUP}/{objects.VERSION}/{objects.GPUNODE_PLURAL}"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """An ApiClient from `kubeconfig`, else in-cluster config, else the default kubeconfig."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(context=context, client_configuration=configuration)
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """The node agent's API calls, on plain dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout_s: float = 10.0) -> None:
        self.api = api_client
        self.timeout_s = timeout_s
        self._watches: set[Any] = set()
        self._watches_lock = threading.Lock()

    def close_watches(self) -> None:
        """Interrupt every open watch stream (shutdown): their iterators end with an error at once."""
        with self._watches_lock:
            open_streams = list(self._watches)
        for raw in open_streams:
            with contextlib.suppress(Exception):
                raw.shutdown()

    # --- transport ---------------------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: Any = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, headers, body_out, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self.api.call_api(
                m, url, header_params=headers, body=body_out, _request_timeout=timeout or self.timeout_s
            )
        except ApiException as exc:  # raised by the rest client on transport problems
            raise KubeError(exc.status or 0, f"{method} {path}: {exc.reason or exc}") from None
        except Exception as exc:  # urllib3 errors: unreachable, timeouts
            raise KubeError(0, f"{method} {path}: {exc}") from None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        response = self._open(method, path, query=query, body=body, content_type=content_type)
        data = response.read()
        if not 200 <= response.status < 300:
            message = data.decode(errors="replace")[:500] if data else ""
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(data).get("message") or message
            raise KubeError(response.status, f"{method} {path}: HTTP {response.status}: {message}")
        return json.loads(data) if data else None

    # --- pods --------------------------------------------------------------------------------------

    @staticmethod
    def _node_selector(node: str) -> tuple[str, str]:
        return ("fieldSelector", f"spec.nodeName={node}")

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        """Pods bound to `node` and the list's resourceVersion."""
        data = self.request("GET", "/api/v1/pods", query=[self._node_selector(node)])
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch_pods(
        self, node: str, resource_version: str, timeout_s: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Watch events (type, object) of pods bound to `node`; ends when the server closes the stream.

        Raises `KubeError(410)` when the resourceVersion is too old (the caller re-lists).
        """
        query = [self._node_selector(node), ("watch", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version and resource_version != "...":
            query.append(("resourceVersion", resource_version))
            query.append(("allowWatchBookmarks", "true"))
        response = self._open("GET", "/api/v1/pods", query=query, timeout=(self.timeout_s, timeout_s + 30))
        if response.status != 200:
            raise KubeError(response.status, f"watch pods: HTTP {response.status}")
        raw = response.response
        with self._watches_lock:
            self._watches.add(raw)
        buffer = b""
        try:
            for chunk in raw.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type") or ""), event.get("object") or {}
                    if kind == "ERROR":
                        code = int(obj.get("code") or 500)
                        raise KubeError(code, f"watch pods: {obj.get('message') or obj}")
                    yield kind, obj
        finally:
            with self._watches_lock:
                self._watches.discard(raw)
            raw.release_conn()

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
        return dict(self.request("POST", GPUNODES, body=body, content_type="application/json"))

    def patch_gpunode_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            self.request("PATCH", f"{GPUNODES}/{name}/status", body={"status": dict(status)}, content_type=MERGE_PATCH)
        )

    def patch_node_labels(self, name: str, labels: Mapping[str, str | None]) -> Any:
        return self.request(
            "PATCH", f"/api/v1/nodes/{name}", body={"metadata": {"labels": dict(labels)}}, content_type=MERGE_PATCH
        )
