"""The admission webhooks' HTTPS server: POST /<path> with an AdmissionReview, answered by a plain function.

`controller.handlers` gives it the two webhooks (/mutate-pods, /validate-pods) and starts it on the controller's
event loop. It replaced kopf's webhook server, whose engine wrapped each call in its handler machinery (the pod
wrapped, copied and diffed, the handler run on a worker thread) at about twice the handlers' own cost
(docs/e2e.md "Issue 16: the webhooks' cost per pod"). Same paths and answers: the AdmissionReview's `uid`,
`allowed`, a base64 JSON patch for a mutation, `status` {code, message} for a refusal. The certificate and key
are files (the chart mounts a Secret); they are read again when they change, for new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from kubeio.client import dumps, loads

log = logging.getLogger("gpupool.controller.webhooks")

#: one webhook: the AdmissionReview's `request` in, the answer's `response` fields (less `uid`) out
Webhook = Callable[[Mapping[str, Any]], dict[str, Any]]
#: the largest body read: an UPDATE carries the object twice, each up to the API server's 3 MiB request limit
MAX_BODY = 8 << 20


class BadReview(ValueError):
    """The body is not an AdmissionReview this server can answer (HTTP 400, as kopf's server answered)."""


def answer(webhook: Webhook, body: bytes) -> dict[str, Any]:
    """The AdmissionReview answering `body`. A webhook that raises refuses the request with code 500 (one bad pod
    never stops the server: the API server shows the message to the user who sent it)."""
    try:
        review = loads(body)  # orjson: the pod is decoded once per call, on the controller's event loop
    except ValueError as exc:
        raise BadReview(f"the body is not JSON: {exc}") from None
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("the body is not an AdmissionReview with a request and its uid")
    if not isinstance(request.get("object"), dict):
        raise BadReview("the AdmissionReview's request has no object")
    try:
        response = webhook(request)
    except Exception as exc:
        log.exception("webhook failed on %s", request.get("uid"))
        response = {"allowed": False, "status": {"code": 500, "message": f"gpupool: internal error: {exc!r}"}}
    return {"apiVersion": review.get("apiVersion") or "admission.k8s.io/v1", "kind": review.get("kind") or
            "AdmissionReview", "response": {"uid": request["uid"], **response}}  # fmt: skip


class AdmissionServer:
    """Serves `webhooks` (URL path without the slash -> function) over HTTPS on `host`:`port` (0: any free port;
    `port` is the bound one once started)."""

    def __init__(self, host: str, port: int, certfile: str, keyfile: str, webhooks: Mapping[str, Webhook],
                 *, check_interval: float = 60.0) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.certfile, self.keyfile = certfile, keyfile
        self.webhooks = dict(webhooks)
        self.check_interval = check_interval
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._digest = self._load()
        self._runner: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    def _load(self) -> str:
        """Load the certificate and key into the context (new handshakes use them); their digest."""
        digest = self._files_digest()
        self.context.load_cert_chain(self.certfile, self.keyfile)
        return digest

    def _files_digest(self) -> str:
        h = hashlib.sha256()
        for path in (self.certfile, self.keyfile):
            h.update(Path(path).read_bytes())
        return h.hexdigest()

    async def _serve(self, request: web.Request) -> web.Response:
        webhook = self.webhooks.get(request.match_info["path"])
        if webhook is None:
            raise web.HTTPNotFound(reason=f"no webhook at {request.path}; served: "
                                          f"{', '.join('/' + p for p in sorted(self.webhooks))}")  # fmt: skip
        try:
            review = answer(webhook, await request.read())
        except BadReview as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        return web.Response(body=dumps(review), content_type="application/json")

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{path}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.context, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._watch = asyncio.create_task(self._watch_files())
        log.info("serving the admission webhooks on https://%s:%d (%s)", self.host, self.port,
                 ", ".join("/" + p for p in sorted(self.webhooks)))  # fmt: skip

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._runner is not None:
            await self._runner.cleanup()

    async def _watch_files(self) -> None:
        """Read the certificate and key again when they change (a renewed Secret)."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if self._files_digest() != self._digest:
                    self._digest = self._load()
                    log.info("reloaded the webhook certificate %s", self.certfile)
            except (OSError, ssl.SSLError) as exc:  # a Secret being rewritten: try again next time
                log.warning("could not reload the webhook certificate (%s); serving the previous one", exc)
