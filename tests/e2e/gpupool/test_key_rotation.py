"""Key rotation on a running cluster (charts/gpupool/README.md "Rotating the signing key"): add a verification key,
switch the signing key, retire the old one, with pods running and arriving throughout. Every pod binds, none is
quarantined, and the extender and the controller stay ready: scheduling never pauses."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from e2e.polling import wait_for
from e2e.stack import Stack
from tests.e2e.gpupool.gp_helpers import GP, assignment_of, gpu_pod


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # whole files only, as the kubelet swaps a Secret's files
    tmp.write_text(text)
    os.replace(tmp, path)


def _readyz(stack: Stack, url: str) -> dict[str, Any]:
    return json.loads(stack._get_text(url))  # type: ignore[no-any-return]


def test_add_switch_retire_with_pods_running(gp: GP, stack: Stack) -> None:
    ns = gp.namespace()
    keys = stack.key_dir
    extender = f"{stack.extender_url}/readyz"
    controller = stack.controller_metrics_url.replace("/metrics", "/readyz")

    def run(name: str) -> dict[str, Any]:
        gp.create(ns, gpu_pod(name, compute=10, memory=1000))
        return assignment_of(gp.wait_bound(ns, name)) or {}

    def everyone_has(pred: Any, what: str) -> None:
        wait_for(lambda: pred(_readyz(stack, extender)["keys"]) and pred(_readyz(stack, controller)["keys"]),
                 timeout=30, what=what)  # fmt: skip

    first = run("before")
    assert "kid" not in first  # the single-key layout writes today's format
    # 1. add
    _write(keys / "key.k2", secrets.token_hex(32) + "\n")
    everyone_has(lambda k: "k2" in k["verification"], "every component to read key k2")
    run("added")
    # 2. switch
    _write(keys / "signing-kid", "k2\n")
    everyone_has(lambda k: k["signing"] == "k2", "every component to sign with k2")
    assert run("switched").get("kid") == "k2"
    # 3. retire, once no running pod needs the old key
    for name in ("before", "added"):
        gp.delete(ns, name)
    (keys / "key").unlink()
    everyone_has(lambda k: k["verification"] == ["k2"], "every component to retire the old key")
    assert run("after").get("kid") == "k2"
    for probe in (extender, controller):
        state = _readyz(stack, probe)
        assert state["ready"] and not state.get("problems") and not state.get("quarantined"), state
    for name in ("switched", "after"):
        assert not [e for e in gp.events(ns, name) if e.startswith("GPUPoolQuarantined")], gp.describe(ns, name)
