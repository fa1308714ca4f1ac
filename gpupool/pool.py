"""The pool: one ledger, one placer and its policies, built from one `PoolConfig` (docs/contracts.md).

The extender, the controller, the CLI and the simulator all build their pool here, so that the
controller's admission plans and the extender's binds are made by the same policies with the same
target workload. Pure: the workload arrives parsed (`gpupool.config` reads the CSV).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpupool import slots
from gpupool.fragmentation import Workload, default_workload
from gpupool.ledger import Ledger
from gpupool.placement import Placer, stable_rank
from gpupool.policies import DEFAULT_POLICY, SIMULATOR_ONLY, Policy, available, make_policy


class PoolConfigError(ValueError):
    """A pool setting that cannot work; the message names the setting and what to write instead."""


def live_policies() -> tuple[str, ...]:
    """Policies a long-running process may enable (`clustering` needs the replay's placed hooks)."""
    return tuple(p for p in available() if p not in SIMULATOR_ONLY)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Everything that decides placement. `policies` empty = every live policy; `workload` None = the
    openb default mix (the target workload M of FGD and of the fragmentation gauge)."""

    slots_per_gpu: int = slots.DEFAULT_SLOTS_PER_GPU
    remote_slots: int = slots.DEFAULT_REMOTE_SLOTS
    overcommit_compute_percent: int = 100
    overcommit_memory_percent: int = 100
    policies: tuple[str, ...] = ()
    default_policy: str = DEFAULT_POLICY
    workload: Workload | None = None
    #: seed of the `random` policy (the simulator passes the run's seed)
    seed: int | None = None
    #: allow `clustering` (the simulator, which tells policies about every placement)
    simulator: bool = False
    #: (GPU model, share of its GPUs model-constrained pods need) for fgdpp's reservation term, fixed; () = derived
    reserved: tuple[tuple[str, float], ...] = ()
    #: the tasks whose model allow-lists fgdpp reserves GPUs for, from the pool's GPUs per model (None =
    #: `workload`; the simulator passes every shape of the trace, the settings every row of the workload CSV)
    reservation_workload: Workload | None = None

    def policy_names(self) -> list[str]:
        """The enabled policies, the default among them; raises `PoolConfigError` on a name that cannot work."""
        allowed = available() if self.simulator else live_policies()
        names = list(dict.fromkeys(self.policies)) or list(allowed)
        if self.default_policy not in names:
            names.append(self.default_policy)
        for name in names:
            if name in allowed:
                continue
            field = "default_policy" if name == self.default_policy else "policies"
            why = "is offered only by the simulator" if name in available() else "is not a policy"
            raise PoolConfigError(f"{field}: {name!r} {why}; choose from {', '.join(live_policies())}")
        return names


@dataclass(frozen=True, slots=True)
class Pool:
    """What one process places with: the ledger, the placer over it, its policies and workload."""

    config: PoolConfig
    ledger: Ledger
    placer: Placer
    workload: Workload

    @property
    def policies(self) -> dict[str, Policy]:
        return self.placer.policies


def build_pool(config: PoolConfig, rank: Callable[[str], int] = stable_rank) -> Pool:
    """The one constructor of a pool (`rank`: node tie-break; the simulator passes its seeded order)."""
    workload = config.workload if config.workload is not None else default_workload()
    try:
        ledger = Ledger(
            slots_per_gpu=config.slots_per_gpu,
            remote_slots=config.remote_slots,
            overcommit_compute_percent=config.overcommit_compute_percent,
            overcommit_memory_percent=config.overcommit_memory_percent,
        )
    except ValueError as exc:
        raise PoolConfigError(str(exc)) from None
    reservation = config.reservation_workload if config.reservation_workload is not None else workload
    policies = {
        name: make_policy(name, workload=workload, seed=config.seed, reserved=dict(config.reserved) or None,
                          reservation_workload=reservation)
        for name in config.policy_names()
    }  # fmt: skip
    return Pool(config, ledger, Placer(ledger, policies, config.default_policy, rank=rank), workload)
