"""The controller's HTTP listener: `/metrics`, `/healthz` and `/readyz` (the chart's probes).

`/readyz` is 200 only once the controller listed namespaces, Nodes, GPUQueues, GPUNodes and pods
(`Controller.readiness`); before that, or while startup failed, 503 with what it still waits for.
Quarantined pods are listed but never make it unready (docs: extender/README.md "Cache and readiness").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: what /readyz reports: the controller's `readiness()`, or None while it is being built
Readiness = Callable[[], dict[str, Any] | None]


def make_server(host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/metrics", "/"):  # "/" as prometheus_client's own server answered it
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                state = readiness() or {"ready": False, "synced": {}, "reason": "starting: listing the cluster"}
                body = json.dumps(state, sort_keys=True).encode()
                self._send(200 if state.get("ready") else 503, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds: no access log

    return ThreadingHTTPServer((host, port), Handler)


def serve(host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> ThreadingHTTPServer:
    """Start the listener in a daemon thread; `shutdown()` the returned server to stop it."""
    server = make_server(host, port, registry, readiness)
    threading.Thread(target=server.serve_forever, name="controller-probes", daemon=True).start()
    return server
