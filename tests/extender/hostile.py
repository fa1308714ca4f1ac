"""Helpers of the hostile-input and race tests: a `PoolService` without HTTP or watch threads."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from extender.kube import ApiError
from extender.service import PoolService
from gpupool.ledger import Ledger
from gpupool.placement import Placer
from gpupool.policies import make_policy
from tests.extender.conftest import KEY
from tests.extender.stubs import StubAPI


class RacyAPI(StubAPI):
    """`StubAPI` whose Binding writes the annotations too, and runs `during_bind` while it is in flight
    (what the watch threads may deliver between the commit and the Binding's answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.during_bind: Callable[[], None] | None = None
        self.fail_binding = False

    def bind_pod(  # type: ignore[override]
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        hook, self.during_bind = self.during_bind, None
        if hook is not None:
            hook()
        if self.fail_binding:
            raise ApiError(500, "injected")
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, f"pod {namespace}/{name} not found")
            if pod["metadata"].get("uid") != uid:
                raise ApiError(409, "uid mismatch")
            if (pod.get("spec") or {}).get("nodeName"):
                raise ApiError(409, f"pod {namespace}/{name} is already bound")
            pod.setdefault("spec", {})["nodeName"] = node
            if annotations:
                pod["metadata"].setdefault("annotations", {}).update(annotations)
            self.rv += 1
            pod["metadata"]["resourceVersion"] = str(self.rv)

    def stored(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.pods[(namespace, name)])


def service(api: Any = None, **ledger_kw: Any) -> PoolService:
    ledger = Ledger(**ledger_kw)
    placer = Placer(ledger, {"bestfit": make_policy("bestfit")}, "bestfit")
    return PoolService(ledger, placer, KEY, api if api is not None else StubAPI())
