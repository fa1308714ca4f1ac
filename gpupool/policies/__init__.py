"""Placement policies behind one interface (`gpupool.policies.base.Policy`), by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpupool.fragmentation import Workload
from gpupool.policies.base import Choice, Demand, Policy, SliceGroup
from gpupool.policies.baselines import BestFit, Clustering, DotProd, Packing, RandomPolicy
from gpupool.policies.fgd import FGD
from gpupool.policies.fgdpp import FGDPlusPlus
from gpupool.policies.simple import BinPack, Spread

#: the cluster-wide default when neither the configuration nor the pod names one
DEFAULT_POLICY = "fgdpp"
#: policies that keep state the node view does not show, fed only by the simulator's replay
SIMULATOR_ONLY = frozenset({"clustering"})


def _workload(params: dict[str, Any]) -> Workload | None:
    workload = params.get("workload")
    if workload is not None and not isinstance(workload, Workload):
        raise TypeError("workload must be a gpupool.fragmentation.Workload")
    return workload


def _seed(params: dict[str, Any]) -> int | None:
    seed = params.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise TypeError("seed must be an int")
    return seed


def _reserved(params: dict[str, Any]) -> dict[str, float] | None:
    reserved = params.get("reserved")
    if reserved is not None and not (isinstance(reserved, dict) and all(0 <= v <= 1 for v in reserved.values())):
        raise TypeError("reserved must map a GPU model to a share in [0, 1] (gpupool.policies.fgdpp.reserved_shares)")
    return reserved


_FACTORIES: dict[str, Callable[..., Policy]] = {
    "binpack": lambda **_: BinPack(),
    "spread": lambda **_: Spread(),
    "fgd": lambda **p: FGD(_workload(p)),
    "fgdpp": lambda **p: FGDPlusPlus(
        _workload(p), reserved=_reserved(p), reservation_workload=_workload({"workload": p.get("reservation_workload")})
    ),
    "bestfit": lambda **_: BestFit(),
    "dotprod": lambda **_: DotProd(),
    "packing": lambda **_: Packing(),
    "clustering": lambda **_: Clustering(),
    "random": lambda **p: RandomPolicy(_seed(p)),
}


def available() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


def make_policy(name: str, **params: object) -> Policy:
    """Build the policy `name`; `params` are policy-specific (`workload`: a target workload M for
    `fgd`/`fgdpp`, default the openb default mix; `seed`: for `random`; `reserved`: the share of each GPU
    model's GPUs that model-constrained pods need, for `fgdpp`, fixed; `reservation_workload`: else the
    workload whose model constraints set that share from the pool's GPUs) and ignored by others."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(available())}")
    return factory(**params)


__all__ = ["DEFAULT_POLICY", "SIMULATOR_ONLY", "Choice", "Demand", "Policy", "SliceGroup", "available", "make_policy"]
