"""Connecting to the API server and raw JSON calls: one request, a paged list, one watch stream.

Importing it pulls in the `kubernetes` package lazily (only `load_api_client` and the calls need it).

Objects stay in the API server's JSON (dicts), never the `kubernetes` client's model classes: the pool
model reads dicts, deserialising hundreds of pods into models is slow, and the generated
`create_namespaced_binding` mis-decodes the Binding reply (kubernetes-client/python#547, #825). The
`kubernetes` package is used for what it does well: kubeconfig / in-cluster configuration, TLS and auth,
connection pooling. Every call is independent (no lock around calls), so concurrent writes run in parallel.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote

import orjson

from kubeio.transport import Transport

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

#: HTTP connections kept to the API server (kube-scheduler binds in parallel goroutines, Allocates run in
#: parallel): a pool smaller than the writing threads drops and reopens connections
POOL_SIZE = 32

#: how long one page of a list may take (seconds)
LIST_TIMEOUT = 60.0


def loads(data: bytes | str) -> Any:
    """JSON from the API server: orjson (a watch event is a whole object, decoded in the watch's thread, several
    times faster than `json`). The two agree on what the API server writes (its integers are int64: orjson would
    read a larger one as a float); what orjson refuses (a lone surrogate escape) goes to `json`, which raises for
    what is not JSON at all."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact JSON, for the adapters' answers (the extender's verbs, the webhooks' reviews): orjson, which writes
    non-ASCII as UTF-8 where `json.dumps` escaped it (the same JSON values); what orjson refuses (an integer beyond
    64 bits echoed from an object) goes through `json`."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, separators=(",", ":")).encode()


#: query parameters: a mapping, or (name, value) pairs (a name may repeat)
Query = Mapping[str, Any] | Sequence[tuple[str, Any]]
#: seconds, or (connect, read) seconds
Timeout = float | tuple[float, float]


def _pairs(query: Query | None) -> list[tuple[str, Any]]:
    return list(query.items() if isinstance(query, Mapping) else query or ())


def _query_string(pairs: list[tuple[str, Any]]) -> str:
    """`name=value&...`, values quoted and booleans written as Kubernetes reads them (`true`, `false`)."""
    return "&".join(
        f"{quote(str(name), safe='')}={quote(str(value).lower() if isinstance(value, bool) else str(value), safe='')}"
        for name, value in pairs
    )


class ApiError(Exception):
    """A non-2xx answer (or no answer) from the API server; `status` is 0 when there was no answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def status_message(data: bytes) -> str:
    """`Reason: message` of a Kubernetes Status body, else the start of the body as text."""
    try:
        status = json.loads(data)
        if isinstance(status, dict) and status.get("message"):
            return str(status.get("reason") or "") + ": " + str(status["message"])
    except ValueError:
        pass
    return data[:300].decode(errors="replace")


def load_api_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    in_cluster: bool | None = None,
    pool_size: int = POOL_SIZE,
) -> Any:
    """A `kubernetes.client.ApiClient` with at least `pool_size` pooled connections.

    `in_cluster` True: the in-cluster config; False: `kubeconfig` (default: $KUBECONFIG, ~/.kube/config);
    None: `kubeconfig` when given, else in-cluster config, else the default kubeconfig.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    elif kubeconfig or in_cluster is False:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(context=context, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, pool_size)
    return client.ApiClient(configuration)


class KubeClient:
    """Raw JSON calls over a `kubernetes.client.ApiClient` (auth, TLS and pooling from it)."""

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self._streams: set[Any] = set()
        self._streams_lock = threading.Lock()
        configuration = getattr(api_client, "configuration", None)
        #: one-shot calls' connections (`kubeio.transport`); None: through the generated client (a proxy)
        self.transport = (
            Transport(configuration, getattr(configuration, "connection_pool_maxsize", None) or POOL_SIZE)
            if Transport.usable(configuration)
            else None
        )

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        in_cluster: bool | None = None,
        timeout: float = 10.0,
        *,
        context: str | None = None,
        pool_size: int = POOL_SIZE,
    ) -> Self:
        return cls(load_api_client(kubeconfig, context, in_cluster=in_cluster, pool_size=pool_size), timeout)

    # --- one call ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: Timeout | None = None,
    ) -> Any:
        """One call: `body` sent as JSON, the answer's JSON returned ({} when empty); raises ApiError."""
        if self.transport is None:
            raw = self._send(method, path, _pairs(query), body, content_type, timeout).read()
            return loads(raw) if raw else {}
        headers = {"Accept": JSON, **({"Content-Type": content_type} if content_type else {})}
        headers.update(self.api_client.default_headers)
        headers.setdefault("User-Agent", self.api_client.user_agent)
        self.api_client.update_params_for_auth(headers, None, ["BearerToken"], path, method, body)
        target = path + ("?" + _query_string(_pairs(query)) if query else "")
        data = None if body is None else body if isinstance(body, bytes) else dumps(body)
        seconds = timeout if timeout is not None else self.timeout  # (connect, read): the longer bounds both
        try:
            status, raw = self.transport.request(
                method, target, headers, data, seconds if isinstance(seconds, int | float) else max(seconds)
            )
        except Exception as exc:  # no answer: refused, reset, timed out, TLS
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= status <= 299:
            raise ApiError(status, status_message(raw))
        return loads(raw) if raw else {}

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        body: Any,
        ctype: str | None,
        timeout: Timeout | None,
    ) -> Any:
        """The 2xx `RESTResponse` (body not read yet); anything else raises ApiError."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": JSON, **({"Content-Type": ctype} if ctype else {})}
        method_, url, header_params, _, post_params = self.api_client.param_serialize(
            method, path, query_params=query or None, header_params=headers, auth_settings=["BearerToken"]
        )
        try:
            response = self.api_client.call_api(
                method_, url, header_params=header_params, body=body, post_params=post_params,
                _request_timeout=timeout if timeout is not None else self.timeout,
            )  # fmt: skip
        except ApiException as exc:  # raised by the rest client on transport problems
            raise ApiError(exc.status or 0, str(exc.reason)) from None
        except Exception as exc:  # urllib3 errors: connection refused, timeouts, TLS
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, status_message(response.read()))
        return response

    # --- list and watch ----------------------------------------------------------------------------

    def list(
        self, path: str, query: Query | None = None, *, timeout: float | None = LIST_TIMEOUT, page_size: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object at `path` (paged, `query` added to each page), and the list's resourceVersion."""
        base = _pairs(query)
        params = [*base, ("limit", page_size)]
        items: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", path, query=params, timeout=timeout)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")
            params = [*base, ("limit", page_size), ("continue", token)]

    def watch(
        self, path: str, resource_version: str = "", query: Query | None = None, timeout_seconds: int = 300
    ) -> Iterator[dict[str, Any]]:
        """Events of one watch request (`{"type":…, "object":…}`, bookmarks included) until the server ends it.

        Raises ApiError(410) when `resource_version` is too old (re-list it); a broken stream, or one
        that `close_streams` aborts, raises its urllib3 error.
        """
        from kubernetes.watch.watch import iter_resp_lines

        params = [*_pairs(query), ("watch", "true"), ("allowWatchBookmarks", "true")]
        params.append(("timeoutSeconds", timeout_seconds))
        if resource_version and resource_version != "...":  # kmock lists with resourceVersion "..."
            params.append(("resourceVersion", resource_version))
        response = self._send("GET", path, params, None, None, (self.timeout, timeout_seconds + 30)).response
        with self._streams_lock:
            self._streams.add(response)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), str(status.get("message") or status))
                yield event
        finally:
            with self._streams_lock:
                self._streams.discard(response)
            response.release_conn()

    def close_streams(self) -> None:
        """Abort every open watch (shutdown): their iterators end with an error at once."""
        with self._streams_lock:
            open_streams = list(self._streams)
        for response in open_streams:
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()
