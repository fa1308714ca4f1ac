"""Prometheus metrics of the node agent and its small HTTP server (`/metrics`, `/healthz`, `/readyz`).

One registry per agent (tests start several agents in one process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.allocate_seconds = Histogram(
            "gpupool_deviceplugin_allocate_seconds",
            "Latency of Allocate (one container request), matching and annotation write included",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.allocate_failures = Counter(
            "gpupool_deviceplugin_allocate_failures_total", "Allocate failures by reason", ["reason"], registry=r
        )
        self.allocations = Counter(
            "gpupool_deviceplugin_allocations_total",
            "Containers served, by how the pod was matched (exact, init-reuse, same-pod, fallback, again)",
            ["how"],
            registry=r,
        )
        self.slots_in_use = Gauge(
            "gpupool_deviceplugin_slots_in_use", "Slots of served containers of live pods", registry=r
        )
        self.slots_total = Gauge("gpupool_deviceplugin_slots", "Slots advertised, by health", ["health"], registry=r)
        self.registrations = Counter(
            "gpupool_deviceplugin_registrations_total",
            "Registrations with the kubelet by result",
            ["result"],
            registry=r,
        )
        self.gpus_unhealthy = Gauge("gpupool_deviceplugin_gpus_unhealthy", "Unhealthy GPUs", registry=r)


class HealthServer:
    """`/metrics`, `/healthz` (process alive and serving), `/readyz` (registered and pod cache synced)."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, healthy: Callable[[], bool], ready: Callable[[], bool]
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                elif self.path.startswith("/readyz"):
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="dp-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
