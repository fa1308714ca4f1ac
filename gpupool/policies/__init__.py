"""Placement policies behind one interface (`gpupool.policies.base.Policy`), by name."""

from __future__ import annotations

from collections.abc import Callable

from gpupool.policies.base import Choice, Demand, Policy, SliceGroup
from gpupool.policies.simple import BinPack, Spread

#: the cluster-wide default when neither the configuration nor the pod names one
DEFAULT_POLICY = "binpack"

_FACTORIES: dict[str, Callable[..., Policy]] = {
    "binpack": lambda **_: BinPack(),
    "spread": lambda **_: Spread(),
}


def available() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


def make_policy(name: str, **params: object) -> Policy:
    """Build the policy `name`; `params` are policy-specific (e.g. `workload`, `seed`) and ignored by others."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(available())}")
    return factory(**params)


__all__ = ["DEFAULT_POLICY", "Choice", "Demand", "Policy", "SliceGroup", "available", "make_policy"]
