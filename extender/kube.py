"""The extender's only door to the API server: a few raw JSON calls and list+watch threads.

Everything stays in the API server's JSON (dicts), never the `kubernetes` client's
model classes: the pool model reads dicts, deserialising into models is slow, and the
generated `create_namespaced_binding` mis-decodes the Binding reply
(kubernetes-client/python#547, #825). The `kubernetes` package is used for what it
does well: kubeconfig / in-cluster configuration, TLS and auth, connection pooling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from gpupool import objects

log = logging.getLogger("gpupool.extender.kube")

PODS = "/api/v1/pods"
NODES = "/api/v1/nodes"
GPUNODES = f"/apis/{objects.API_VERSION}/{objects.GPUNODE_PLURAL}"

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer (or no answer) from the API server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class PodAPI(Protocol):
    """What bind needs from the API server (the benchmark stubs exactly this boundary)."""

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]: ...

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None: ...


def _status_message(data: bytes) -> str:
    try:
        status = json.loads(data)
        if isinstance(status, dict) and status.get("message"):
            return str(status.get("reason") or "") + ": " + str(status["message"])
    except ValueError:
        pass
    return data[:300].decode(errors="replace")


#: HTTP connections kept to the API server (kube-scheduler binds in parallel goroutines)
_POOL_SIZE = 32


class KubeAPI:
    """Raw JSON calls over a `kubernetes.client.ApiClient` (auth, TLS and pooling from it)."""

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        self.client = api_client
        self.timeout = timeout
        self.streams: set[Any] = set()

    @classmethod
    def connect(cls, kubeconfig: str | None = None, in_cluster: bool | None = None, timeout: float = 10.0) -> KubeAPI:
        from kubernetes import client, config

        configuration = client.Configuration()
        if in_cluster or (in_cluster is None and not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        # binds write concurrently (no node lock); a pool smaller than the bind threads drops and reopens
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, _POOL_SIZE)
        return cls(client.ApiClient(configuration), timeout)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        serialized = self.client.param_serialize(
            method, path, query_params=list((query or {}).items()) or None, header_params=headers,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        method_, url, header_params, _, post_params = serialized
        try:
            response = self.client.call_api(
                method_, url, header_params=header_params, body=body, post_params=post_params,
                _request_timeout=timeout if timeout is not None else self.timeout,
            )  # fmt: skip
        except ApiException as exc:
            raise ApiError(exc.status or 0, str(exc.reason)) from None
        except Exception as exc:  # connection refused, timeouts, TLS
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, _status_message(response.read()))
        if stream:
            return response.response
        raw = response.read()
        return json.loads(raw) if raw else {}

    # --- what bind needs ---------------------------------------------------------------------------

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")  # type: ignore[no-any-return]

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body=patch, content_type=content_type
        )

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None:
        """POST the Binding subresource ourselves (see the module docstring)."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self._call(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods/{name}/binding",
            body=body,
            content_type="application/json",
        )

    # --- list and watch ----------------------------------------------------------------------------

    def list(self, path: str) -> tuple[list[dict[str, Any]], str]:
        """Every object at `path` (paged), and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 500}
        while True:
            page = self._call("GET", path, query=query, timeout=60)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")
            query = {"limit": 500, "continue": token}

    def watch(self, path: str, resource_version: str, timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """Events of one watch request (`{"type":…, "object":…}`); raises ApiError(410) when too old."""
        from kubernetes.watch.watch import iter_resp_lines

        query: dict[str, Any] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        response = self._call("GET", path, query=query, timeout=(10, timeout_seconds + 30), stream=True)
        self.streams.add(response)
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 0), str(status.get("message") or status))
                yield event
        finally:
            self.streams.discard(response)
            response.release_conn()

    def close_streams(self) -> None:
        """Abort every open watch (shutdown): their threads see an error and, being stopped, return."""
        for response in list(self.streams):
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()


class Reflector(threading.Thread):
    """list + watch of one resource, feeding a handler; re-lists after 410 Gone or any watch failure.

    `on_list(items)` receives the full list (initially and after every re-list) and
    `on_event(type, object)` every watch event; both run on this thread.
    """

    def __init__(
        self,
        api: KubeAPI,
        path: str,
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        watch_timeout: int = 300,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"reflector {path}", daemon=True)
        self.api = api
        self.path = path
        self.on_list = on_list
        self.on_event = on_event
        self.watch_timeout = watch_timeout
        self.stopping = threading.Event()
        self.listed = threading.Event()
        self.relists = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                items, rv = self.api.list(self.path)
                self.on_list(items)
                self.listed.set()
                backoff = 0.2
                while not self.stopping.is_set():
                    for event in self.api.watch(self.path, rv, self.watch_timeout):
                        if self.stopping.is_set():
                            return
                        obj = event.get("object") or {}
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            rv = str(new_rv)
                        if event.get("type") != "BOOKMARK":
                            self.on_event(str(event.get("type")), obj)
                    # the server closed the watch at its timeout: resume from the last resourceVersion
            except ApiError as exc:
                if self.stopping.is_set():
                    return
                if exc.status == 410:
                    log.info("%s: resourceVersion too old (410 Gone); re-listing", self.path)
                else:
                    log.warning("%s: list/watch failed (%s); re-listing in %.1f s", self.path, exc, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                self.relists += 1
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("%s: handler or stream failed; re-listing in %.1f s", self.path, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                self.relists += 1
            else:
                return
