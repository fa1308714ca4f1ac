"""What a pod asks of the pool, in integer units (1 % compute, 1 MiB memory).

These are plain values: `gpupool.resources` builds them from a pod manifest, the
simulator builds them from trace rows, and the placement engine consumes them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: compute units of one whole GPU (1 unit = 1 %)
WHOLE_GPU_COMPUTE = 100


class Locality(enum.StrEnum):
    """Whitepaper SLA tiers: `local` = GPUs of the pod's node only; `pool` = local first, else remote."""

    LOCAL = "local"
    POOL = "pool"


class QoS(enum.StrEnum):
    """Best-effort slices may use over-committed capacity and are preempted first."""

    GUARANTEED = "guaranteed"
    BEST_EFFORT = "best-effort"


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """`count` slices of (`compute` %, `memory_mib` MiB) for one container, each on a distinct GPU.

    `memory_mib` None means "the whole memory of the GPU chosen" (DESIGN.md §1).
    """

    name: str
    index: int
    count: int
    compute: int
    memory_mib: int | None
    init: bool = False

    @property
    def whole_gpu(self) -> bool:
        return self.compute == WHOLE_GPU_COMPUTE and self.memory_mib is None


@dataclass(frozen=True, slots=True)
class PodRequest:
    """Everything placement needs to know about a pod; no Kubernetes objects.

    `containers` holds only the containers that ask for slices. `cpu_milli` and
    `host_memory_mib` are host resources; the live extender leaves them at 0
    (kube-scheduler filters them) and the simulator fills them from the trace.
    """

    uid: str
    containers: tuple[ContainerRequest, ...]
    namespace: str = ""
    name: str = ""
    locality: Locality = Locality.LOCAL
    qos: QoS = QoS.GUARANTEED
    models: frozenset[str] = field(default_factory=frozenset)
    uuids: frozenset[str] = field(default_factory=frozenset)
    policy: str | None = None
    queue: str | None = None
    priority: int = 0
    cpu_milli: int = 0
    host_memory_mib: int = 0

    @property
    def slice_count(self) -> int:
        return sum(c.count for c in self.containers)

    @property
    def compute_units(self) -> int:
        """Total compute in pool units (100 = one whole GPU), as quotas count it."""
        return sum(c.count * c.compute for c in self.containers)

    def memory_units(self, default_gpu_memory_mib: int) -> int:
        """Total memory in MiB; whole-memory slices count as `default_gpu_memory_mib` each."""
        return sum(
            c.count * (c.memory_mib if c.memory_mib is not None else default_gpu_memory_mib)
            for c in self.containers
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else self.uid
