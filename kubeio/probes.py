"""The small HTTP listener of the controller and the node agent: `/metrics`, `/healthz`, `/readyz`.

One home for the probe server both processes run (the extender serves its probes through FastAPI). Each
probe is a callable answering `(ok, body)`; `/metrics` renders the given Prometheus registry. Probes are hit
every few seconds by the kubelet, so requests are not logged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: a probe: (healthy/ready, body, content type); 200 when true, else 503
Probe = Callable[[], tuple[bool, bytes, str]]


class ProbeServer:
    """`/metrics` (and `/`, as prometheus_client's own server answered it), `/healthz`, `/readyz`."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthz: Probe, readyz: Probe, name: str = "probes"
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, body, content_type = (healthz if path == "/healthz" else readyz)()
                    self._send(200 if ok else 503, body, content_type)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> ProbeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def text_probe(check: Callable[[], bool], ok: bytes = b"ok\n", failed: bytes = b"failed\n") -> Probe:
    """A plain-text probe from a boolean check."""

    def probe() -> tuple[bool, bytes, str]:
        good = check()
        return good, ok if good else failed, "text/plain"

    return probe
