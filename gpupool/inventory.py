"""The pool's hardware as plain values: GPUs and the nodes that hold them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GPUInfo:
    """One physical GPU. Capacity is 100 compute units and `memory_mib` memory units."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    numa: int | None = None
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node of the pool.

    Host resources (`cpu_milli`, `memory_mib`, `max_pods`) are tracked only when set:
    the simulator sets them to reproduce the openb protocol; the live extender leaves
    them to kube-scheduler. `disabled` lists GPU uuids an admin took out of service.
    `agent_endpoint` is where the node's agent serves remote slices (GPUNode `status.agentEndpoint`,
    docs/contracts.md); empty: its GPUs serve only pods of this node.
    """

    name: str
    gpus: tuple[GPUInfo, ...] = ()
    cpu_milli: int | None = None
    memory_mib: int | None = None
    max_pods: int | None = None
    disabled: frozenset[str] = field(default_factory=frozenset)
    agent_endpoint: str = ""

    @property
    def model(self) -> str:
        """The node's GPU model ('' when it has none; the first one's when mixed)."""
        return self.gpus[0].model if self.gpus else ""
