"""A real API server for the component tiers (tests/controller, tests/extender): one per test module.

`RealAPI.start(tag)` brings up etcd + kube-apiserver + KCM (+ the default kube-scheduler, which ignores
gpupool pods) through `e2e.cluster.Cluster(nodes=[]).up(kwok=False, nodes=False)`, applies the CRDs of
`crds/`, writes a signing key, and gives plain-dict helpers over the admin identity. No kwok: Nodes are
created as API objects only (nobody runs their pods, which is all a component test needs).

`ControllerProcess` runs `python -m controller.main` (the `gpupool-controller` entry point) as a
process of the cluster (log in `<run_dir>/logs/<name>.log`), serving the admission webhooks on
https://127.0.0.1:<port> with the cluster's `webhook` certificate.

The module-level fixtures live in the test modules; the tier skips with `SKIP_REASON` only when
`e2e.cluster.missing_binaries()` names something.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import REPO_ROOT, Cluster, FakeNode, free_port, missing_binaries
from e2e.polling import wait_for
from gpupool.objects import pod_gated
from gpupool.timefmt import now_rfc3339

SKIP_REASON = "k8s binaries not found in $GPUPOOL_E2E_BIN (run e2e/build.sh)"
SYSTEM_NAMESPACE = "gpupool-system"
GROUP_VERSION = "gpupool.io/v1alpha1"


def skip_without_binaries() -> None:
    if missing_binaries():
        pytest.skip(SKIP_REASON)


def gpu_inventory(node: str, gpus: int, memory_mib: int, model: str) -> list[dict[str, Any]]:
    return [
        {"uuid": f"GPU-{node}-{i:02d}", "index": i, "model": model, "memoryMiB": memory_mib, "health": "Healthy",
         "numa": 0}
        for i in range(gpus)
    ]  # fmt: skip


class RealAPI:
    """One local control plane plus admin helpers that speak API JSON (dicts)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.key = secrets.token_hex(32).encode()
        self.key_file = cluster.run_dir / "signing.key"
        self.key_file.write_bytes(self.key)
        self.api_client = cluster.api_client()
        from kubernetes import client

        self.core: Any = client.CoreV1Api(self.api_client)  # dict bodies; typed Any (see docs/e2e.md)
        self.custom: Any = client.CustomObjectsApi(self.api_client)
        self.coordination: Any = client.CoordinationV1Api(self.api_client)
        self.kubeconfigs: dict[str, Path] = {}
        self._ns = 0

    # --- life cycle ----------------------------------------------------------------------------------

    @classmethod
    def start(cls, tag: str) -> RealAPI:
        run_dir = tempfile.mkdtemp(prefix=f"gpupool-{tag}-")
        cluster = Cluster(run_dir=run_dir, nodes=[]).up(kwok=False, nodes=False)
        api = cls(cluster)
        try:
            api.apply_crds()
        except BaseException:
            api.down(failed=True)
            raise
        return api

    def down(self, *, failed: bool = False) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()
        keep = failed or bool(os.environ.get("GPUPOOL_E2E_KEEP"))
        self.cluster.down(remove_run_dir=not keep)

    def apply_crds(self) -> None:
        c = self.cluster
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
        c.kubectl("wait", "--for=condition=Established", "crd/gpunodes.gpupool.io", "crd/gpuqueues.gpupool.io",
                  "--timeout=60s")  # fmt: skip

    def apply(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([dict(d) for d in docs]))

    def service_account(self, name: str, namespace: str = SYSTEM_NAMESPACE) -> Path:
        """A ServiceAccount bound to cluster-admin (the chart carries the real RBAC) and a token kubeconfig."""
        self.cluster.create_namespace(namespace)
        self.apply([
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"{namespace}-{name}-test"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        ])  # fmt: skip
        path = self.cluster.kubeconfig_for_serviceaccount(name, namespace, seconds=24 * 3600)
        self.kubeconfigs[name] = path
        return path

    def namespace(self, prefix: str = "t", labels: Mapping[str, str] | None = None) -> str:
        self._ns += 1
        name = f"{prefix}-{self._ns}-{secrets.token_hex(2)}"
        self.cluster.create_namespace(name)
        if labels:
            self.core.patch_namespace(name, {"metadata": {"labels": dict(labels)}})
        return name

    # --- objects -------------------------------------------------------------------------------------

    def plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    def gpu_node(self, name: str, *, gpus: int = 2, memory_mib: int = 16384, model: str = "T4-16GB",
                 labels: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        """A Node (API object only; nobody runs it) and its GPUNode with a known inventory in status."""
        self.cluster.apply_nodes([FakeNode(name, gpus=gpus, gpu_model=model, gpu_memory_mib=memory_mib,
                                           labels=dict(labels or {}))])  # fmt: skip
        body = {"apiVersion": GROUP_VERSION, "kind": "GPUNode", "metadata": {"name": name}, "spec": {}}
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.create_cluster_custom_object("gpupool.io", "v1alpha1", "gpunodes", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        status = {"status": {"gpus": gpu_inventory(name, gpus, memory_mib, model),
                             "heartbeatTime": now_rfc3339()}}  # fmt: skip
        return dict(self.custom.patch_cluster_custom_object_status(
            "gpupool.io", "v1alpha1", "gpunodes", name, status))  # fmt: skip

    def delete_gpu_node(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.custom.delete_cluster_custom_object("gpupool.io", "v1alpha1", "gpunodes", name)
        with contextlib.suppress(ApiException):
            self.core.delete_node(name)

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.plain(self.core.create_namespaced_pod(namespace, dict(body))))

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.plain(self.core.read_namespaced_pod(name, namespace)))

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.plain(self.core.list_namespaced_pod(namespace)).get("items") or [])

    def delete_pod(self, namespace: str, name: str, *, wait: bool = True) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
        if wait:  # nobody runs these pods: grace period 0 removes them at once
            wait_for(lambda: not self.exists(namespace, name), 30, f"pod {namespace}/{name} to be gone", 0.1)

    def exists(self, namespace: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespaced_pod(name, namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        got = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        return list(self.plain(got).get("items") or [])

    def lease_holder(self, name: str, namespace: str = SYSTEM_NAMESPACE) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self.coordination.read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease.spec.holder_identity if lease.spec else None


def gpu_pod(
    name: str,
    *,
    count: Any = 1,
    compute: Any = 30,
    memory: Any = 1024,
    prefix: str = "gpupool.io",
    annotations: Mapping[str, str] | None = None,
    priority_class: str | None = None,
    privileged: bool = False,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod asking for slices as a user writes it (no schedulerName, no gate: the webhook adds them)."""
    limits: dict[str, Any] = {}
    for res, value in (("gpu", count), ("gpu-compute", compute), ("gpu-memory", memory)):
        if value is not None:
            limits[f"{prefix}/{res}"] = str(value)
    container: dict[str, Any] = {"name": "main", "image": "busybox", "resources": {"limits": limits}}
    if privileged:
        container["securityContext"] = {"privileged": True}
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = dict(annotations)
    if labels:
        meta["labels"] = dict(labels)
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def plain_pod(name: str) -> dict[str, Any]:
    spec = {"containers": [{"name": "main", "image": "busybox"}], "terminationGracePeriodSeconds": 0}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def http_text(url: str, timeout: float = 2.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode())
    except OSError:
        return ""


class ControllerProcess:
    """`python -m controller.main` as a process of the cluster, with its own webhook and metrics ports."""

    def __init__(self, api: RealAPI, name: str, *, identity: str | None = None, lease_name: str = "gpupool-controller",
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.api = api
        self.name = name
        self.identity = identity or name
        self.lease_name = lease_name
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.extra_env = dict(env or {})

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def env(self) -> dict[str, str]:
        c = self.api.cluster
        kubeconfig = self.api.kubeconfigs.get("gpupool-controller") or self.api.service_account("gpupool-controller")
        return {
            "GPUPOOL_KUBECONFIG": str(kubeconfig),
            "GPUPOOL_SIGNING_KEY_FILE": str(self.api.key_file),
            "GPUPOOL_WEBHOOK_HOST": "127.0.0.1",
            "GPUPOOL_WEBHOOK_PORT": str(self.webhook_port),
            "GPUPOOL_WEBHOOK_CERT_FILE": str(c.pki / "webhook.crt"),
            "GPUPOOL_WEBHOOK_KEY_FILE": str(c.pki / "webhook.key"),
            "GPUPOOL_METRICS_PORT": str(self.metrics_port),
            "GPUPOOL_ADMISSION_INTERVAL_SECONDS": "0.3",
            "GPUPOOL_LEADER_ELECTION": "true",
            "GPUPOOL_IDENTITY": self.identity,
            "GPUPOOL_LEASE_NAME": self.lease_name,
            "GPUPOOL_LEASE_NAMESPACE": SYSTEM_NAMESPACE,
            "GPUPOOL_LEASE_DURATION_SECONDS": "3",
            "GPUPOOL_LEASE_RENEW_SECONDS": "0.5",
            **self.extra_env,
        }

    def metric(self, name: str) -> float | None:
        for line in http_text(f"http://127.0.0.1:{self.metrics_port}/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def ready(self) -> bool:
        """Rebuilt (metric) and the webhook server answers TLS with the cluster's certificate."""
        if self.metric("gpupool_controller_ready") != 1.0:
            return False
        ctx = ssl.create_default_context(cafile=str(self.api.cluster.pki / "ca.crt"))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.webhook_port), timeout=2) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def start(self, timeout: float = 60.0) -> ControllerProcess:
        self.api.cluster.start_process(
            self.name, [sys.executable, "-m", "controller.main"], env=self.env(), cwd=REPO_ROOT,
            ready_check=self.ready, ready_timeout=timeout,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """SIGTERM (the Lease is released on the way out), SIGKILL after 10 s."""
        self.api.cluster.stop_process(self.name)

    def kill(self) -> None:
        """SIGKILL by PID: no cleanup, the Lease stays until it expires."""
        import signal

        proc = self.api.cluster.processes[self.name]
        if proc.pid is not None and proc.alive():
            os.kill(proc.pid, signal.SIGKILL)
            wait_for(lambda: not proc.alive(), 10, f"{self.name} to die", 0.05)
        if proc.popen is not None:
            with contextlib.suppress(Exception):
                proc.popen.wait(timeout=1)

    def alive(self) -> bool:
        proc = self.api.cluster.processes.get(self.name)
        return proc is not None and proc.alive()

    def install_webhooks(self, *, failure_policy: str = "Fail") -> None:
        """Register the Mutating/ValidatingWebhookConfiguration (controller.webhooks) pointing at this process."""
        from controller.webhooks import render_webhook_configurations

        ca = (self.api.cluster.pki / "ca.crt").read_bytes()
        docs = render_webhook_configurations(self.webhook_url, ca)
        for doc in docs:
            for hook in doc["webhooks"]:
                hook["failurePolicy"] = failure_policy
        self.api.apply(docs)


def wait_webhook_serving(api: RealAPI, namespace: str, probe: Callable[[str], dict[str, Any]],
                         timeout: float = 30.0) -> None:  # fmt: skip
    """Wait until the API server calls the (just registered or re-pointed) webhooks: `probe(name)` creates
    a pod that only the mutating webhook can make gated; retried until it is gated."""
    from kubernetes.client.exceptions import ApiException

    n = [0]

    def once() -> bool:
        n[0] += 1
        name = f"probe-{n[0]}"
        try:
            pod = probe(name)
        except ApiException:
            return False
        api.delete_pod(namespace, name, wait=False)
        return pod_gated(pod)

    wait_for(once, timeout, "the API server to call the gpupool webhooks", 0.2)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)[:4000]
