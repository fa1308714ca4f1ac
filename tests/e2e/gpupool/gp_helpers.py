"""Helpers of the gpupool e2e scenarios: pod builders, checks, and :class:`GP` (namespaces, queues, pods, waits)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from e2e.polling import wait_for
from e2e.stack import Stack
from gpupool import objects, resources

_PLAIN = client.ApiClient()  # only turns client objects into API JSON dicts

STACK_LABEL = ("gpupool.io/e2e", "stack")
LOW, HIGH = "gpupool-e2e-low", "gpupool-e2e-high"
IMAGE = "registry.k8s.io/pause:3.10"


#: the marker every test of this directory carries: the local-harness feature it needs, which an existing cluster
#: with gpupool installed by Helm (``GPUPOOL_E2E_KUBECONFIG``, e.g. kind) does not give; conftest.py skips with it
#: there (docs/e2e.md "kind")
LOCAL_HARNESS = "local_harness"
#: what every test here needs at least: the gp helper's teardown waits on the extender's /debug/pool
DEBUG_POOL = (
    "the local extender's /debug/pool (e2e/stack.py Stack.debug_pool), which the gp helper's teardown polls until "
    "the pool let go of the test's pods; a Helm install does not expose it"
)
#: the fake nodes of the local control plane
KWOK_NODES = "the kwok nodes of e2e.cluster.DEFAULT_NODES (asserted by name, GPU model and UUID)"


def gpu_pod(
    name: str,
    *,
    gpus: int = 1,
    compute: int | None = None,
    memory: int | None = None,
    annotations: Mapping[str, str] | None = None,
    priority_class: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    names: tuple[str, str, str] = resources.CANONICAL,  # type: ignore[assignment]
) -> dict[str, Any]:
    limits: dict[str, str] = {names[0]: str(gpus)}
    if compute is not None:
        limits[names[1]] = str(compute)
    if memory is not None:
        limits[names[2]] = str(memory)
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": IMAGE, "resources": {"limits": limits}}],
    }
    if priority_class:
        spec["priorityClassName"] = priority_class
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": spec,
    }


def assignment_of(pod: Any) -> dict[str, Any] | None:
    text = (pod.metadata.annotations or {}).get(resources.ASSIGNMENT)
    return json.loads(text) if text else None


def gated(pod: Any) -> bool:
    """`gpupool.objects.pod_gated` of a `kubernetes` client pod object."""
    return objects.pod_gated(_PLAIN.sanitize_for_serialization(pod))


def check_pool(snapshot: Mapping[str, Any]) -> None:
    """No GPU over its capacity, and every GPU's usage is the sum of the holdings on it."""
    used: dict[str, list[int]] = {}
    for h in snapshot["holdings"].values():
        for s in h["slices"]:
            u = used.setdefault(s["gpu"], [0, 0, 0])
            u[0] += int(s["compute"])
            u[1] += int(s["memory"] if "memory" in s else s.get("memory_mib", 0))
            u[2] += 1
    for node, n in snapshot["nodes"].items():
        for g in n["gpus"]:
            assert g["used_compute"] <= 100, f"{node}/{g['uuid']} over compute capacity: {g}"
            assert g["used_memory_mib"] <= g["memory_mib"], f"{node}/{g['uuid']} over memory capacity: {g}"
            want = used.get(g["uuid"], [0, 0, 0])
            assert [g["used_compute"], g["used_memory_mib"], g["slices"]] == want, f"{g['uuid']}: {g} vs {want}"


class GP:
    """Per-test helper: namespaces, queues and pods it creates are removed at teardown."""

    def __init__(self, stack: Stack, core_v1: Any) -> None:
        self.stack = stack
        self.cluster = stack.cluster
        self.v1 = core_v1
        self.namespaces: list[str] = []
        self.queues: list[str] = []
        self.extra: list[Callable[[], None]] = []

    def namespace(self, *, webhook: bool = True, labels: Mapping[str, str] | None = None) -> str:
        name = f"gp-{uuid.uuid4().hex[:8]}"
        self.cluster.create_namespace(name)
        lab = dict(labels or {})
        if webhook:
            lab[STACK_LABEL[0]] = STACK_LABEL[1]
        if lab:
            self.v1.patch_namespace(name, {"metadata": {"labels": lab}})
        self.namespaces.append(name)
        return name

    def queue(self, name: str, spec: Mapping[str, Any]) -> str:
        name = f"{name}-{uuid.uuid4().hex[:5]}"
        body = {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUQueue", "metadata": {"name": name}, "spec": dict(spec)}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        self.queues.append(name)

        def known() -> bool:  # the controller has seen it (its status is written by the leader)
            r = self.cluster.kubectl("get", "gpuqueue", name, "-o", "json", check=False)
            return r.returncode == 0 and "status" in json.loads(r.stdout)

        with contextlib.suppress(TimeoutError):
            wait_for(known, timeout=10, what=f"GPUQueue {name} status")
        return name

    def create(self, ns: str, body: Mapping[str, Any]) -> Any:
        return self.v1.create_namespaced_pod(ns, dict(body))

    def create_retrying(self, ns: str, body: Mapping[str, Any], timeout: float = 60) -> Any:
        """Create, retrying while the admission webhook is unreachable (a controller restart: with one replica
        and ``failurePolicy: Fail`` the API server refuses gpupool pods meanwhile, as it should)."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.v1.create_namespaced_pod(ns, dict(body))
            except ApiException as e:
                if e.status != 500 or "failed calling webhook" not in str(e.body) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def pod(self, ns: str, name: str) -> Any:
        return self.v1.read_namespaced_pod(name, ns)

    def exists(self, ns: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            p = self.v1.read_namespaced_pod(name, ns)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return p.metadata.deletion_timestamp is None

    def wait_bound(self, ns: str, name: str, timeout: float = 60) -> Any:
        def bound() -> Any:
            p = self.pod(ns, name)
            return p if p.spec.node_name and assignment_of(p) else None

        try:
            return wait_for(bound, timeout=timeout, what=f"{ns}/{name} bound with an assignment", interval=0.2)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.describe(ns, name)}") from None

    def wait_admitted(self, ns: str, name: str, timeout: float = 30) -> Any:
        return wait_for(
            lambda: (p := self.pod(ns, name)) and not gated(p) and p, timeout=timeout, what=f"{ns}/{name} admitted"
        )

    def stays_gated(self, ns: str, name: str, seconds: float = 3.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p = self.pod(ns, name)
            assert gated(p), f"{ns}/{name} was admitted, expected it to wait"
            assert not p.spec.node_name
            time.sleep(0.3)

    def wait_gone(self, ns: str, name: str, timeout: float = 60) -> None:
        wait_for(lambda: not self.exists(ns, name), timeout=timeout, what=f"{ns}/{name} gone")

    def delete(self, ns: str, name: str, wait: bool = True) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.v1.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        if wait:
            self.wait_gone(ns, name)

    def events(self, ns: str, name: str) -> list[str]:
        items = self.v1.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return [f"{e.reason}: {e.message}" for e in items]

    def describe(self, ns: str, name: str) -> str:
        try:
            p = self.pod(ns, name)
        except Exception as e:
            return f"<{ns}/{name}: {e}>"
        conds = [(c.type, c.status, c.reason, c.message) for c in (p.status.conditions or [])]
        return (
            f"pod {ns}/{name}: node={p.spec.node_name} gated={gated(p)} scheduler={p.spec.scheduler_name} "
            f"annotations={p.metadata.annotations} conditions={conds}\nevents: {self.events(ns, name)}"
        )

    def holdings(self) -> dict[str, Any]:
        return dict(self.stack.debug_pool()["holdings"])

    def cleanup(self) -> None:
        for fn in self.extra:
            with contextlib.suppress(Exception):
                fn()
        uids: set[str] = set()
        for ns in self.namespaces:
            with contextlib.suppress(Exception):
                for p in self.v1.list_namespaced_pod(ns).items:
                    uids.add(p.metadata.uid)
                self.v1.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
        for ns in self.namespaces:
            with contextlib.suppress(Exception):
                wait_for(lambda ns=ns: not self.v1.list_namespaced_pod(ns).items, timeout=60, what=f"pods of {ns} gone")
            with contextlib.suppress(Exception):
                self.v1.delete_namespace(ns, grace_period_seconds=0)
        for q in self.queues:
            self.cluster.kubectl("delete", "gpuqueue", q, "--ignore-not-found", "--wait=false", check=False)
        with contextlib.suppress(Exception):
            wait_for(lambda: not uids & set(self.holdings()), timeout=30, what="the extender to free the test's pods")
