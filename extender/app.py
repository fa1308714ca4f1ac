"""FastAPI routes of the extender: JSON <-> `PoolService` calls, nothing else.

Bodies are read raw (with an early 413 above `max_body_bytes`) and decoded by
pydantic-core straight from bytes; answers are serialised with `json.dumps`. A body
that is not JSON, misses a required field, or embeds a pod whose fields have the wrong
JSON types (`wire.PodJSON`) gets 400 naming the field; a well-formed pod that asks for
something invalid gets 200 with `Error` filled (kube-scheduler then reports it on the pod). Nothing
here answers 500 on purpose: an unexpected exception is logged and answered as a
verb-level `Error`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from extender import wire
from extender.kube import BIND_THREADS
from extender.service import PoolService

log = logging.getLogger("gpupool.extender.http")

_JSON = "application/json"
_M = TypeVar("_M", bound=BaseModel)


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    pass


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (before reading it) anything announced or streamed above `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise BodyTooLarge()
        except ValueError:
            raise BadBody("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(model: type[_M], body: bytes) -> _M:
    if not body:
        raise BadBody("empty body; kube-scheduler sends a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise BadBody(f"not a valid {model.__name__}: {problems}") from None


def create_app(service: PoolService, *, url_prefix: str = "", max_body_bytes: int = 8 * 2**20) -> FastAPI:
    """The extender's HTTP app over `service`. `url_prefix` is the path part of the scheduler's urlPrefix."""
    prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
    app = FastAPI(title="gpupool scheduler extender", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    metrics = service.metrics

    def verb(
        name: str,
    ) -> Callable[[Callable[[bytes], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
        def wrap(handler: Callable[[bytes], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def route(request: Request) -> Response:
                started = time.perf_counter()
                try:
                    body = await read_body(request, max_body_bytes)
                    response = await handler(body)
                    outcome = "ok"
                except BodyTooLarge:
                    response = JSONResponse(
                        {"Error": f"request body larger than {max_body_bytes} bytes (max_body_bytes)"},
                        status_code=413,
                    )
                    outcome = "rejected"
                except BadBody as exc:
                    response = JSONResponse({"Error": str(exc)}, status_code=400)
                    outcome = "rejected"
                except Exception as exc:  # never a bare 500 with a stack trace
                    log.exception("%s failed", name)
                    response = JSONResponse({"Error": f"internal error in {name}: {exc}"}, status_code=500)
                    outcome = "error"
                metrics.verb_latency.labels(name).observe(time.perf_counter() - started)
                metrics.requests.labels(name, outcome).inc()
                return response

            app.add_api_route(f"{prefix}/{name}", route, methods=["POST"], name=name)
            return route

        return wrap

    @verb("filter")
    async def _filter(body: bytes) -> Response:
        args = _decode(wire.ExtenderArgs, body)
        names, as_names = args.node_names()
        answer = service.filter(args.Pod, names)  # CPU-bound and sub-millisecond: a thread hop costs more
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
        return Response(_dumps(out), media_type=_JSON)

    @verb("prioritize")
    async def _prioritize(body: bytes) -> Response:
        args = _decode(wire.ExtenderArgs, body)
        names, _ = args.node_names()
        scores = service.prioritize(args.Pod, names)
        return Response(_dumps([{"Host": n, "Score": s} for n, s in scores]), media_type=_JSON)

    binders: list[CapacityLimiter] = []  # binds' own threads (`BIND_THREADS`), made inside the event loop

    @verb("bind")
    async def _bind(body: bytes) -> Response:
        args = _decode(wire.ExtenderBindingArgs, body)
        if not binders:
            binders.append(CapacityLimiter(BIND_THREADS))
        error = await to_thread.run_sync(
            service.bind, args.PodName, args.PodNamespace, args.PodUID, args.Node, limiter=binders[0]
        )
        return Response(_dumps({"Error": error}), media_type=_JSON)

    @verb("preempt")
    async def _preempt(body: bytes) -> Response:
        args = _decode(wire.ExtenderPreemptionArgs, body)
        kept = await to_thread.run_sync(service.preempt, args.Pod, args.victims())
        out = {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}
                for node, (uids, pdb) in kept.items()
            }
        }
        return Response(_dumps(out), media_type=_JSON)

    add_probe_routes(app, service)

    @app.get("/debug/pool")
    async def debug_pool() -> Response:
        snap = await to_thread.run_sync(service.snapshot)
        snap["readiness"] = service.readiness()
        return Response(_dumps(snap), media_type=_JSON)

    return app


def add_probe_routes(app: FastAPI, service: PoolService) -> None:
    """`/healthz`, `/readyz` and `/metrics`: on the verb listener and on the probe listener."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        state = service.readiness()
        return Response(_dumps(state), status_code=200 if state["ready"] else 503, media_type=_JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data = await to_thread.run_sync(generate_latest, service.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


def create_probe_app(service: PoolService) -> FastAPI:
    """Probes and metrics only, for a listener on all addresses (the verbs stay on loopback)."""
    app = FastAPI(title="gpupool extender probes", docs_url=None, redoc_url=None, openapi_url=None)
    add_probe_routes(app, service)
    return app
