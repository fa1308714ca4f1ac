"""Tenancy: which namespaces a GPUQueue serves, and which nodes a queue reserves for its own pods.

Pure rules (no I/O) shared by the controller (admission webhook, `QueueManager`) and the extender
(filter, through `Placer.reservations`). The contracts are written in docs/contracts.md ("queue
membership", "reserved nodes"); the README's tenancy section says how an admin uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpupool.queues import QueueSpec


def serves(spec: QueueSpec, namespace: str, labels: Mapping[str, str]) -> bool:
    """Does the queue serve pods of `namespace` (labels `labels`)?

    Like Kueue's ClusterQueue: `spec.namespaces` lists namespaces, `spec.namespaceSelector` selects them by
    label (`{}` selects every namespace); a queue with neither serves no namespace, so no tenant can use a
    queue its admin did not open to it.
    """
    if namespace in spec.namespaces:
        return True
    return spec.namespace_selector is not None and spec.namespace_selector.matches(labels)


def members_text(spec: QueueSpec) -> str:
    """The namespaces a queue serves, in words (for refusals and waiting reasons)."""
    parts = []
    if spec.namespaces:
        parts.append("namespaces " + ", ".join(sorted(spec.namespaces)))
    selector = spec.namespace_selector
    if selector is not None:
        if not selector.match_labels and not selector.match_expressions:
            return "every namespace (spec.namespaceSelector: {})"
        terms = [f"{k}={v}" for k, v in selector.match_labels]
        terms += [f"{k} {op} ({', '.join(values)})" if values else f"{k} {op}" for k, op, values in
                  selector.match_expressions]  # fmt: skip
        parts.append("namespaces labelled " + ", ".join(terms))
    if not parts:
        return "no namespace (it has neither spec.namespaces nor spec.namespaceSelector)"
    return " and ".join(parts)


def membership_problem(spec: QueueSpec, namespace: str, labels: Mapping[str, str]) -> str | None:
    """None when the queue serves `namespace`; else why a pod there may not use it, and what to do."""
    if serves(spec, namespace, labels):
        return None
    return (
        f"GPUQueue {spec.name} serves {members_text(spec)}, not namespace {namespace}; name a GPUQueue that "
        f"serves {namespace} (or none), or ask the cluster admin to add {namespace} to GPUQueue {spec.name}"
    )


def selector_rank(spec: QueueSpec) -> int:
    """Order of default membership: a namespace list (0) before a label selector (1) before `{}` (2)."""
    selector = spec.namespace_selector
    if selector is None:
        return 0
    return 2 if not selector.match_labels and not selector.match_expressions else 1


class Reservations:
    """Nodes reserved by GPUQueues with `spec.reserveNodes`: node -> the queues whose pods may use it.

    A queue reserves the nodes its `nodeSelector` matches; a node matched by several reserving queues serves
    any of them. Other pods (another queue's or no queue's) get neither local nor remote slices there. Fed by
    the adapters (queue specs, node labels); read by `Placer`.
    """

    def __init__(self) -> None:
        self._selectors: dict[str, tuple[tuple[str, str], ...]] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._owners: dict[str, frozenset[str]] | None = {}
        #: bumped on every change (placement caches that depend on reservations key on it)
        self.version = 0

    def __bool__(self) -> bool:
        return bool(self._selectors)

    def set_queue(self, spec: QueueSpec) -> None:
        if spec.reserve_nodes and spec.node_selector:
            if self._selectors.get(spec.name) == spec.node_selector:
                return
            self._selectors[spec.name] = spec.node_selector
        elif self._selectors.pop(spec.name, None) is None:
            return
        self._changed()

    def remove_queue(self, name: str) -> None:
        if self._selectors.pop(name, None) is not None:
            self._changed()

    def set_node_labels(self, node: str, labels: Mapping[str, str]) -> None:
        fresh = dict(labels)
        if self._labels.get(node) != fresh:
            self._labels[node] = fresh
            self._changed()

    def remove_node(self, node: str) -> None:
        if self._labels.pop(node, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._owners = None
        self.version += 1

    def owners(self, node: str) -> frozenset[str]:
        """The queues that reserve `node` (empty: anyone may use it)."""
        if self._owners is None:
            owners: dict[str, frozenset[str]] = {}
            for name, labels in self._labels.items():
                mine = frozenset(
                    q for q, selector in self._selectors.items() if all(labels.get(k) == v for k, v in selector)
                )
                if mine:
                    owners[name] = mine
            self._owners = owners
        return self._owners.get(node, frozenset())

    def allows(self, node: str, queue: str | None) -> bool:
        """May a pod of `queue` (None or "": no queue) have slices on `node`?"""
        if not self._selectors:
            return True
        owners = self.owners(node)
        return not owners or queue in owners

    def refusal(self, node: str) -> str:
        owners = ", ".join(sorted(self.owners(node)))
        return f"reserved for the pods of GPUQueue {owners} (spec.reserveNodes)"  # no node name: reasons aggregate
