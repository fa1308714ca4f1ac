"""Helpers of the hostile-input and race tests: a `PoolService` without HTTP or watch threads."""

from __future__ import annotations

from typing import Any

from extender.service import PoolService
from gpupool.ledger import Ledger
from gpupool.placement import Placer
from gpupool.policies import make_policy
from tests.extender.conftest import KEY
from tests.extender.stubs import StubAPI


def service(api: Any = None, **ledger_kw: Any) -> PoolService:
    ledger = Ledger(**ledger_kw)
    placer = Placer(ledger, {"bestfit": make_policy("bestfit")}, "bestfit")
    return PoolService(ledger, placer, KEY, api if api is not None else StubAPI())
