"""The extender's HTTP app: JSON <-> `PoolService` calls, nothing else.

The verbs (`POST <url_prefix>/filter`, `/prioritize`, `/bind`, `/preempt`) are served by `VerbApp`, a plain ASGI
handler in front of the FastAPI app: kube-scheduler calls filter and prioritize for every pod in its serial
scheduling loop, and FastAPI's middleware stack, routing and endpoint machinery cost more per call than the
service's own work there (docs/e2e.md "Issue 16: the extender's HTTP layer"). FastAPI keeps everything else:
`/healthz`, `/readyz`, `/metrics`, `/debug/pool` and the answers to any other path.

Bodies are read raw (413 above `max_body_bytes`, before reading when `Content-Length` says so) and decoded by
pydantic-core straight from bytes; answers are encoded by orjson. A body that is not JSON, misses a required
field, or embeds a pod whose fields have the wrong JSON types (`wire.PodJSON`) gets 400 naming the field; a
well-formed pod that asks for something invalid gets 200 with `Error` filled (kube-scheduler then reports it on
the pod). An unexpected exception is logged and answered with `Error` naming it (status 500), never a stack trace.
docs/contracts.md "extender verbs (wire)".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from extender import wire
from extender.kube import BIND_THREADS
from extender.service import PoolService
from kubeio.client import dumps

log = logging.getLogger("gpupool.extender.http")

_JSON = "application/json"
_M = TypeVar("_M", bound=BaseModel)
#: the verbs kube-scheduler calls (`k8s.io/kube-scheduler/extender/v1`), each at `<url_prefix>/<verb>`
VERBS = ("filter", "prioritize", "bind", "preempt")


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection before its body was read: nobody to answer."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (before reading it) anything announced or streamed above `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    raise BodyTooLarge()
            except ValueError:
                raise BadBody("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decode(model: type[_M], body: bytes) -> _M:
    if not body:
        raise BadBody("empty body; kube-scheduler sends a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise BadBody(f"not a valid {model.__name__}: {problems}") from None


class Verbs:
    """The four verbs over `service`: a request body in, the answer's JSON out (HTTP 200)."""

    def __init__(self, service: PoolService) -> None:
        self.service = service
        #: binds' own threads (`BIND_THREADS`): a bind waits on the API server, never on filter's event loop
        self.binders = ThreadPoolExecutor(BIND_THREADS, thread_name_prefix="gpupool-bind")

    async def filter(self, body: bytes) -> bytes:
        args = _decode(wire.ExtenderArgs, body)
        names, as_names = args.node_names()
        answer = self.service.filter(args.Pod, names)  # CPU-bound and sub-millisecond: a thread hop costs more
        failed, unresolvable = wire.failure_groups(answer.failed, answer.unresolvable)
        out: dict[str, Any] = {
            "Nodes": None,
            "NodeNames": answer.passing if as_names else None,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": answer.error,
        }
        if not as_names:  # answer in the form asked: the passing Node objects themselves
            passing = set(answer.passing)
            items = [i for i in (args.Nodes.items if args.Nodes else None) or [] if wire.object_name(i) in passing]
            out["Nodes"] = {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}
        if answer.error:
            out["NodeNames"] = None if not as_names else []
        return dumps(out)

    async def prioritize(self, body: bytes) -> bytes:
        args = _decode(wire.ExtenderArgs, body)
        names, _ = args.node_names()
        scores = self.service.prioritize(args.Pod, names)
        return dumps([{"Host": n, "Score": s} for n, s in scores])

    async def bind(self, body: bytes) -> bytes:
        args = _decode(wire.ExtenderBindingArgs, body)
        error = await asyncio.get_running_loop().run_in_executor(
            self.binders, self.service.bind, args.PodName, args.PodNamespace, args.PodUID, args.Node
        )
        return dumps({"Error": error})

    async def preempt(self, body: bytes) -> bytes:
        args = _decode(wire.ExtenderPreemptionArgs, body)
        kept = await to_thread.run_sync(self.service.preempt, args.Pod, args.victims())
        out = {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}
                for node, (uids, pdb) in kept.items()
            }
        }
        return dumps(out)


_JSON_HEADERS = [(b"content-type", _JSON.encode())]


class VerbApp:
    """ASGI app: the verbs' paths served directly, everything else (and the lifespan) by `fallback`."""

    def __init__(self, service: PoolService, fallback: FastAPI, *, url_prefix: str, max_body_bytes: int) -> None:
        self.service = service
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self.verbs = Verbs(service)
        prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
        metrics = service.metrics
        #: path -> (verb name, handler, its latency histogram, its outcome counters): label lookups done once
        self.routes: dict[str, tuple[str, Callable[[bytes], Awaitable[bytes]], Any, dict[str, Any]]] = {
            f"{prefix}/{name}": (
                name,
                getattr(self.verbs, name),
                metrics.verb_latency.labels(name),
                {o: metrics.requests.labels(name, o) for o in ("ok", "rejected", "error")},
            )
            for name in VERBS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _send(send, 405, b'{"detail":"Method Not Allowed"}', [(b"allow", b"POST")])
            return
        name, handler, latency, outcomes = route
        started = time.perf_counter()
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
            status, answer = 200, await handler(body)
            outcome = "ok"
        except ClientGone:
            return
        except BodyTooLarge:
            status, outcome = 413, "rejected"
            answer = dumps({"Error": f"request body larger than {self.max_body_bytes} bytes (max_body_bytes)"})
        except BadBody as exc:
            status, outcome, answer = 400, "rejected", dumps({"Error": str(exc)})
        except Exception as exc:  # never a bare 500 with a stack trace
            log.exception("%s failed", name)
            status, outcome, answer = 500, "error", dumps({"Error": f"internal error in {name}: {exc}"})
        latency.observe(time.perf_counter() - started)
        outcomes[outcome].inc()
        await _send(send, status, answer)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*_JSON_HEADERS, length, *(headers or ())]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: PoolService, *, url_prefix: str = "", max_body_bytes: int = 8 * 2**20) -> VerbApp:
    """The extender's HTTP app over `service`. `url_prefix` is the path part of the scheduler's urlPrefix."""
    app = FastAPI(title="gpupool scheduler extender", docs_url=None, redoc_url=None, openapi_url=None)
    add_probe_routes(app, service)

    @app.get("/debug/pool")
    async def debug_pool() -> Response:
        snap = await to_thread.run_sync(service.snapshot)
        snap["readiness"] = service.readiness()
        return Response(dumps(snap), media_type=_JSON)

    return VerbApp(service, app, url_prefix=url_prefix, max_body_bytes=max_body_bytes)


def add_probe_routes(app: FastAPI, service: PoolService) -> None:
    """`/healthz`, `/readyz` and `/metrics`: on the verb listener and on the probe listener."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        state = service.readiness()
        return Response(dumps(state), status_code=200 if state["ready"] else 503, media_type=_JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data = await to_thread.run_sync(generate_latest, service.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


def create_probe_app(service: PoolService) -> FastAPI:
    """Probes and metrics only, for a listener on all addresses (the verbs stay on loopback)."""
    app = FastAPI(title="gpupool extender probes", docs_url=None, redoc_url=None, openapi_url=None)
    add_probe_routes(app, service)
    return app
