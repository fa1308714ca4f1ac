"""The controller's probes on `kubeio.probes.ProbeServer`: `/metrics`, `/healthz` and `/readyz`.

`/readyz` is 200 only once the controller listed namespaces, Nodes, GPUQueues, GPUNodes and pods
(`Controller.readiness`); before that, or while startup failed, 503 with what it still waits for, as JSON.
Quarantined pods are listed but never make it unready (docs: extender/README.md "Cache and readiness").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from kubeio.probes import ProbeServer, text_probe

#: what /readyz reports: the controller's `readiness()`, or None while it is being built
Readiness = Callable[[], dict[str, Any] | None]


def serve(host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> ProbeServer:
    """Start the listener in a daemon thread; `stop()` the returned server to stop it."""

    def readyz() -> tuple[bool, bytes, str]:
        state = readiness() or {"ready": False, "synced": {}, "reason": "starting: listing the cluster"}
        return bool(state.get("ready")), json.dumps(state, sort_keys=True).encode(), "application/json"

    return ProbeServer(host, port, registry, text_probe(lambda: True), readyz, name="controller-probes").start()
