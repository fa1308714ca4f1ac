"""The kube-scheduler extender wire types (`k8s.io/kube-scheduler/extender/v1/types.go`).

The Go structs have no JSON tags, so keys are the Go field names in PascalCase.
Embedded pods and nodes keep the API server's camelCase JSON and stay plain dicts.
Requests are decoded straight from bytes by pydantic-core (`model_validate_json`),
which is several times faster than `json.loads` plus validation for the 5,000-name
bodies kube-scheduler sends on large clusters. Unknown keys are ignored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gpupool import resources


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _pod_shape(value: dict[str, Any]) -> dict[str, Any]:
    """A pod whose fields have the wrong JSON types is a bad body (400 naming the field), never a 500."""
    errors = resources.pod_shape_errors(value)
    if errors:
        raise ValueError("; ".join(str(e) for e in errors[:5]))
    return value


#: an embedded `v1.Pod` in the API server's JSON, its fields' types checked (`resources.pod_shape_errors`)
PodJSON = Annotated[dict[str, Any], AfterValidator(_pod_shape)]


def object_name(item: Any) -> str:
    """`metadata.name` of an embedded object, '' when the object or its metadata is malformed."""
    meta = item.get("metadata") if isinstance(item, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


class NodeList(_Wire):
    """A `v1.NodeList`, sent in `Nodes` when the extender is not node-cache-capable."""

    items: list[Any] | None = None

    def names(self) -> list[str]:
        return [name for item in self.items or [] if (name := object_name(item))]


class ExtenderArgs(_Wire):
    """Filter and prioritize request."""

    Pod: PodJSON
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None

    def node_names(self) -> tuple[list[str], bool]:
        """The candidate nodes and whether they came as names (True) or as a NodeList (False).

        kube-scheduler reads `NodeNames` first and falls back to `Nodes`; both null = no node.
        """
        if self.NodeNames is not None:
            return self.NodeNames, True
        if self.Nodes is not None:
            return self.Nodes.names(), False
        return [], True


#: distinct reason texts one filter answer carries; the nodes of smaller groups share `OTHER_REASONS`
MAX_REASONS = 8
#: longest reason text sent (kube-scheduler puts each distinct text into the pod's FailedScheduling event)
MAX_REASON_CHARS = 256
OTHER_REASONS = "does not fit for other reasons (gpupool explain names each node's)"


def failure_groups(failed: Mapping[str, str], unresolvable: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`FailedNodes` and `FailedAndUnresolvableNodes` as sent: every failing node, grouped by reason.

    Each node keeps its map (kube-scheduler counts the nodes per reason text in the pod's FailedScheduling
    event and preempts only on the resolvable ones). The texts come from `Placer.filter(detail=False)`, which
    gives a `local` pod's failing nodes the reason of their state without its node-specific detail; each
    is cut to `MAX_REASON_CHARS`. Of more than `MAX_REASONS` distinct texts, the nodes of the largest groups
    keep theirs and the others get `OTHER_REASONS`. docs/contracts.md "filter answer".
    """
    short: dict[str, str] = {}  # each distinct reason cut once, then nodes mapped by lookup
    for reason in {*failed.values(), *unresolvable.values()}:
        short[reason] = reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
    out_failed = {node: short[r] for node, r in failed.items()}
    out_unresolvable = {node: short[r] for node, r in unresolvable.items()}
    if len(set(short.values())) > MAX_REASONS:
        sizes = Counter(out_failed.values())
        sizes.update(out_unresolvable.values())
        kept = {t for t, _ in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[: MAX_REASONS - 1]}
        out_failed = {n: t if t in kept else OTHER_REASONS for n, t in out_failed.items()}
        out_unresolvable = {n: t if t in kept else OTHER_REASONS for n, t in out_unresolvable.items()}
    return out_failed, out_unresolvable


class ExtenderFilterResult(_Wire):
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(_Wire):
    Host: str
    Score: int


class ExtenderBindingArgs(_Wire):
    PodName: str = Field(min_length=1)
    PodNamespace: str = Field(min_length=1)
    PodUID: str = Field(min_length=1)
    Node: str = Field(min_length=1)


class ExtenderBindingResult(_Wire):
    Error: str = ""


class MetaPod(_Wire):
    UID: str


class MetaVictims(_Wire):
    Pods: list[MetaPod] | None = None
    NumPDBViolations: int = 0


class Victims(_Wire):
    Pods: list[PodJSON] | None = None
    NumPDBViolations: int = 0


class ExtenderPreemptionArgs(_Wire):
    Pod: PodJSON
    NodeNameToVictims: dict[str, Victims | None] | None = None
    NodeNameToMetaVictims: dict[str, MetaVictims | None] | None = None

    def victims(self) -> dict[str, tuple[list[str], int]]:
        """node -> (victim pod UIDs, NumPDBViolations), from whichever form was sent."""
        out: dict[str, tuple[list[str], int]] = {}
        if self.NodeNameToMetaVictims is not None:
            for node, meta in self.NodeNameToMetaVictims.items():
                meta = meta or MetaVictims()
                out[node] = ([p.UID for p in meta.Pods or []], meta.NumPDBViolations)
        elif self.NodeNameToVictims is not None:
            for node, full in self.NodeNameToVictims.items():
                full = full or Victims()
                uids = [str((p.get("metadata") or {}).get("uid") or "") for p in full.Pods or []]
                out[node] = ([u for u in uids if u], full.NumPDBViolations)
        return out


class ExtenderPreemptionResult(_Wire):
    NodeNameToMetaVictims: dict[str, MetaVictims] = Field(default_factory=dict)
