"""The gpupool stack on a local :class:`e2e.cluster.Cluster`: everything DESIGN.md §2 runs, as local processes.

:class:`Stack` adds, in order:

1. the signing keys (``<run_dir>/gpupool/signing/``, the Secret's layout: ``key``, ``key.<id>``, ``signing-kid``),
   shared by the extender, the controller and the node agents, which re-read them on change;
2. the CRDs of ``crds/`` (waited until Established);
3. identities: namespace ``gpupool-system`` with the ServiceAccounts ``gpupool-controller``, ``gpupool-extender`` and
   ``gpupool-deviceplugin`` (bound to cluster-admin here; the chart carries the real RBAC) and a token kubeconfig
   for each, so the validating webhook sees the same usernames as in a real install;
4. the controller (kopf operator, admission webhooks on https://127.0.0.1:<port> with the cluster's ``webhook``
   serving cert) and the Mutating/ValidatingWebhookConfigurations rendered by
   :func:`controller.webhooks.render_webhook_configurations`;
5. the extender (``/readyz`` once its cache is rebuilt);
6. the ``gpupool-scheduler`` kube-scheduler pointed at the extender (the chart's KubeSchedulerConfiguration via
   :func:`e2e.chart.scheduler_config`, else ``e2e/templates/sched-gpupool.yaml``);
7. the node agent in ``--multi-node --fake-inventory`` mode publishing a GPUNode for every kwok node (CPU-only nodes
   get a GPUNode with zero GPUs, so ``locality: pool`` pods there can hold remote slices), except the nodes given in
   ``plugin_nodes``, which a real single-node device plugin serves (see :meth:`Stack.start_node_agent`).

Each step waits for readiness (polls with timeouts); every process logs to ``<run_dir>/logs/<name>.log``.
:meth:`Stack.restart` restarts one component by name (``extender``, ``gpupool-controller``, ``gpupool-nodes``,
``gpupool-scheduler`` or a ``node-agent-<node>``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import REPO_ROOT, TEMPLATES, Cluster
from e2e.nodes import FakeNode, fake_inventory
from e2e.polling import wait_for
from e2e.processes import ClusterError, free_port

SYSTEM_NAMESPACE = "gpupool-system"
SERVICE_ACCOUNTS = ("gpupool-controller", "gpupool-extender", "gpupool-deviceplugin")
EXTENDER = "gpupool-extender"
CONTROLLER = "gpupool-controller"
SCHEDULER = "gpupool-scheduler"
PUBLISHER = "gpupool-nodes"  # the --multi-node node agent
#: kube-scheduler settings used by the e2e tier and the benchmark (both gpupool and plain runs)
AGENT_ENDPOINT_PORT = 9403


class Stack:
    """gpupool's processes on a local cluster. ``Stack(cluster).up()``; ``down()`` stops only what it started."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        nodes: Sequence[FakeNode] | None = None,
        plugin_nodes: Sequence[str] = (),
        webhook_match_expressions: Sequence[Mapping[str, Any]] = (),
        controller_env: Mapping[str, str] | None = None,
        extender_env: Mapping[str, str] | None = None,
        publisher_env: Mapping[str, str] | None = None,
        scheduler_config: str | None = None,
        use_chart: bool = True,
        chart_values: Mapping[str, Any] | None = None,
        scheduler_verbosity: int = 2,
    ) -> None:
        if not cluster.local:
            raise ClusterError("the gpupool stack runs its processes locally: it needs a local Cluster")
        self.cluster = cluster
        self.nodes = list(cluster.nodes if nodes is None else nodes)
        self.plugin_nodes = list(plugin_nodes)
        self.webhook_match_expressions = [dict(e) for e in webhook_match_expressions]
        self.controller_env = dict(controller_env or {})
        self.extender_env = dict(extender_env or {})
        self.publisher_env = dict(publisher_env or {})
        self.scheduler_config_yaml = scheduler_config
        self.use_chart = use_chart
        self.chart_values = dict(chart_values or {})  # values the chart's scheduler config is rendered with
        self.scheduler_verbosity = scheduler_verbosity
        self.dir = cluster.run_dir / "gpupool"
        self.ports: dict[str, int] = {}
        self.kubeconfigs: dict[str, Path] = {}
        self.scheduler_config_source = ""
        self.timings: dict[str, float] = {}
        self._started: list[str] = []

    # ---------------------------------------------------------------- paths

    @property
    def key_dir(self) -> Path:
        """The signing keys as the chart mounts the Secret (docs/contracts.md "signing keys")."""
        return self.dir / "signing"

    @property
    def key_file(self) -> Path:
        """The first key (id `default`): `gpupool status --signing-key-file` reads it alone."""
        return self.key_dir / "key"

    @property
    def inventory_file(self) -> Path:
        return self.dir / "fake-inventory.yaml"

    @property
    def extender_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['extender']}"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['webhook']}"

    @property
    def controller_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['controller_metrics']}/metrics"

    # ---------------------------------------------------------------- bring-up

    def up(self, timeout: float = 90.0) -> Stack:
        t0 = time.monotonic()

        def mark(step: str) -> None:
            self.timings[step] = round(time.monotonic() - t0, 2)

        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_dir.mkdir(exist_ok=True)
        if not any(self.key_dir.iterdir()):
            self.key_file.write_text(secrets.token_hex(32) + "\n")
            self.key_file.chmod(0o600)
        self.apply_crds()
        mark("crds")
        self.create_identities()
        mark("identities")
        self.write_inventory()
        self.start_publisher(wait=False)  # GPUNodes first: the extender and controller rebuild from them
        self.start_controller(timeout=timeout)
        mark("controller")
        self.install_webhooks()
        mark("webhooks")
        self.start_extender(timeout=timeout)
        mark("extender")
        self.start_scheduler(timeout=timeout)
        mark("scheduler")
        self.wait_gpunodes([n.name for n in self.nodes if n.name not in self.plugin_nodes], timeout=timeout)
        self.wait_pool(timeout=timeout)
        mark("pool")
        return self

    def apply_crds(self) -> None:
        c = self.cluster
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
        c.kubectl(
            "wait", "--for=condition=Established", "crd/gpunodes.gpupool.io", "crd/gpuqueues.gpupool.io",
            "--timeout=60s",
        )  # fmt: skip

    def create_identities(self, token_seconds: int = 7 * 24 * 3600) -> None:
        c = self.cluster
        c.create_namespace(SYSTEM_NAMESPACE)
        docs: list[dict[str, Any]] = []
        for sa in SERVICE_ACCOUNTS:
            docs.append(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": SYSTEM_NAMESPACE}}
            )
            docs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"{sa}-e2e"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": SYSTEM_NAMESPACE}],
                }
            )
        c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        for sa in SERVICE_ACCOUNTS:
            self.kubeconfigs[sa] = c.kubeconfig_for_serviceaccount(sa, SYSTEM_NAMESPACE, seconds=token_seconds)

    def write_inventory(self) -> None:
        served = [n for n in self.nodes if n.name not in self.plugin_nodes]
        self.inventory_file.write_text(yaml.safe_dump(fake_inventory(served), sort_keys=True))

    def _py(self, module: str) -> list[str]:
        return [sys.executable, "-m", module]

    def start_publisher(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        env = {
            "GPUPOOL_KUBECONFIG": str(self.kubeconfigs["gpupool-deviceplugin"]),
            "GPUPOOL_MULTI_NODE": "true",
            "GPUPOOL_FAKE_INVENTORY": str(self.inventory_file),
            "GPUPOOL_SIGNING_KEY_FILE": str(self.key_dir),
            "GPUPOOL_AGENT_ENDPOINT": f"127.0.0.1:{AGENT_ENDPOINT_PORT}",
            "GPUPOOL_HEALTH_INTERVAL_SECONDS": "1",
            "GPUPOOL_HEARTBEAT_INTERVAL_SECONDS": "30",
            "GPUPOOL_METRICS_ENABLED": "false",
            **self.publisher_env,
        }
        self.cluster.start_process(PUBLISHER, self._py("deviceplugin.main"), env=env, cwd=REPO_ROOT, wait=False)
        self._started.append(PUBLISHER)
        if wait:
            self.wait_gpunodes([n.name for n in self.nodes if n.name not in self.plugin_nodes], timeout=timeout)

    def start_node_agent(
        self, node: str, plugin_dir: str | os.PathLike[str], *, gpus: Sequence[Mapping[str, Any]] = (),
        wait: bool = True, timeout: float = 60.0, env: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        """Start the real single-node device plugin (gRPC on *plugin_dir*, which must hold a (fake) kubelet's
        ``kubelet.sock``) for *node*; ready when it registered and its pod cache synced. Returns its name.
        *env*: more settings (e.g. ``GPUPOOL_BACKEND=pool`` and its runtime directories)."""
        name = f"node-agent-{node}"
        inv = self.dir / f"inventory-{node}.yaml"
        inv.write_text(yaml.safe_dump({node: [dict(g) for g in gpus]}))
        port = free_port()
        self.ports[name] = port
        env = {
            "GPUPOOL_KUBECONFIG": str(self.kubeconfigs["gpupool-deviceplugin"]),
            "GPUPOOL_NODE_NAME": node,
            "GPUPOOL_FAKE_INVENTORY": str(inv),
            "GPUPOOL_PLUGIN_DIR": str(plugin_dir),
            "GPUPOOL_SIGNING_KEY_FILE": str(self.key_dir),
            "GPUPOOL_AGENT_ENDPOINT": f"127.0.0.1:{AGENT_ENDPOINT_PORT}",
            "GPUPOOL_METRICS_HOST": "127.0.0.1",
            "GPUPOOL_METRICS_PORT": str(port),
            "GPUPOOL_KUBELET_POLL_SECONDS": "0.2",
            **(env or {}),
        }
        self.cluster.start_process(
            name, self._py("deviceplugin.main"), env=env, cwd=REPO_ROOT,
            ready_url=f"http://127.0.0.1:{port}/readyz", ready_timeout=timeout, wait=wait,
        )  # fmt: skip
        self._started.append(name)
        return name

    def start_controller(self, *, timeout: float = 90.0) -> None:
        c = self.cluster
        self.ports["webhook"] = free_port()
        self.ports["controller_metrics"] = free_port()
        env = {
            "GPUPOOL_KUBECONFIG": str(self.kubeconfigs["gpupool-controller"]),
            "GPUPOOL_SIGNING_KEY_FILE": str(self.key_dir),
            "GPUPOOL_WEBHOOK_HOST": "127.0.0.1",
            "GPUPOOL_WEBHOOK_PORT": str(self.ports["webhook"]),
            "GPUPOOL_WEBHOOK_CERT_FILE": str(c.pki / "webhook.crt"),
            "GPUPOOL_WEBHOOK_KEY_FILE": str(c.pki / "webhook.key"),
            "GPUPOOL_METRICS_PORT": str(self.ports["controller_metrics"]),
            "GPUPOOL_LEADER_ELECTION": "false",
            "GPUPOOL_ADMISSION_INTERVAL_SECONDS": "0.5",
            **self.controller_env,
        }
        c.start_process(
            CONTROLLER, self._py("controller.main"), env=env, cwd=REPO_ROOT,
            ready_check=self.controller_ready, ready_timeout=timeout,
        )  # fmt: skip
        self._started.append(CONTROLLER)

    def controller_ready(self) -> bool:
        """The controller rebuilt its state (metric) and its webhook server accepts TLS."""
        if "gpupool_controller_ready 1.0" not in self._get_text(self.controller_metrics_url):
            return False
        ctx = ssl.create_default_context(cafile=str(self.cluster.pki / "ca.crt"))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.ports["webhook"]), timeout=2) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def webhook_configurations(self) -> list[dict[str, Any]]:
        from controller.webhooks import render_webhook_configurations

        ca = (self.cluster.pki / "ca.crt").read_bytes()
        users = [f"system:serviceaccount:{SYSTEM_NAMESPACE}:{sa}" for sa in SERVICE_ACCOUNTS]
        docs = render_webhook_configurations(self.webhook_url, ca, system_users=users)  # as the chart does
        for doc in docs:
            for hook in doc["webhooks"]:
                sel = hook.setdefault("namespaceSelector", {})
                sel.setdefault("matchExpressions", []).extend(self.webhook_match_expressions)
        return docs

    def install_webhooks(self) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.webhook_configurations()))

    def start_extender(self, *, timeout: float = 90.0) -> None:
        self.ports["extender"] = free_port()
        env = {
            "GPUPOOL_KUBECONFIG": str(self.kubeconfigs["gpupool-extender"]),
            "GPUPOOL_SIGNING_KEY_FILE": str(self.key_dir),
            "GPUPOOL_HOST": "127.0.0.1",
            "GPUPOOL_PORT": str(self.ports["extender"]),
            **self.extender_env,
        }
        self.cluster.start_process(
            EXTENDER, self._py("extender.main"), env=env, cwd=REPO_ROOT,
            ready_url=f"{self.extender_url}/readyz", ready_timeout=timeout,
        )  # fmt: skip
        self._started.append(EXTENDER)

    def render_scheduler_config(self) -> str:
        """The chart's KubeSchedulerConfiguration when the chart renders, else the e2e template."""
        if self.scheduler_config_yaml:
            self.scheduler_config_source = "given"
            return self.scheduler_config_yaml
        if self.use_chart:
            try:
                from e2e import chart

                text = chart.scheduler_config(
                    self.extender_url, self.cluster.kubeconfig_for("scheduler"), values=self.chart_values
                )
                self.scheduler_config_source = "chart"
                return text
            except Exception as e:  # no chart yet, no helm: the template is the same contract
                print(f"[gpupool stack] chart scheduler config unavailable ({e}); using the template", file=sys.stderr)
        self.scheduler_config_source = "template"
        return (TEMPLATES / "sched-gpupool.yaml").read_text()

    def start_scheduler(self, *, timeout: float = 60.0) -> None:
        cfg = self.render_scheduler_config()
        self.cluster.start_gpupool_scheduler(
            self.extender_url, config_yaml=cfg, name=SCHEDULER, verbosity=self.scheduler_verbosity, wait=False
        )
        self.cluster.wait_ready(SCHEDULER, timeout=timeout)
        self._started.append(SCHEDULER)

    # ---------------------------------------------------------------- waits and probes

    def _get_text(self, url: str, timeout: float = 3.0) -> str:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def _get_json(self, url: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())

    def debug_pool(self) -> dict[str, Any]:
        """The extender's ``/debug/pool`` snapshot (the ledger)."""
        return dict(self._get_json(f"{self.extender_url}/debug/pool"))

    def extender_metrics(self) -> str:
        return self._get_text(f"{self.extender_url}/metrics")

    def controller_metrics(self) -> str:
        return self._get_text(self.controller_metrics_url)

    def extender_ready(self) -> bool:
        return self.cluster.probe(f"{self.extender_url}/readyz")

    def wait_gpunodes(self, names: Iterable[str], timeout: float = 60.0) -> None:
        want = set(names)

        def published() -> bool:
            try:
                r = self.cluster.kubectl("get", "gpunodes.gpupool.io", "-o", "json", check=False)
            except subprocess.TimeoutExpired:  # a loaded API server answers the list slowly: ask again
                return False
            if r.returncode != 0:
                return False
            items = json.loads(r.stdout).get("items") or []
            have = {i["metadata"]["name"] for i in items if (i.get("status") or {}).get("heartbeatTime")}
            return want <= have

        try:
            # every GPUNode listed per poll: at 5,000 nodes a 0.5 s poll was a fifth of the API server's work
            # while the node agent published (docs/e2e.md "Issue 16 at 5,000 nodes")
            interval = 0.5 if len(want) <= 100 else 10.0
            wait_for(published, timeout=timeout, what=f"GPUNodes of {len(want)} nodes", interval=interval)
        except TimeoutError as e:
            raise ClusterError(f"{e}\n" + self.cluster.log_tails(30, [PUBLISHER])) from None

    def wait_pool(self, timeout: float = 60.0) -> None:
        """Until the extender's cache has every GPU of the stack's nodes."""
        want = sum(n.gpus for n in self.nodes if n.name not in self.plugin_nodes)

        def full() -> bool:
            m = re.search(r"^gpupool_extender_cache_gpus (\S+)", self.extender_metrics(), re.M)
            return m is not None and float(m.group(1)) >= want

        wait_for(full, timeout=timeout, what=f"extender cache with {want} GPUs", interval=0.5)

    # ---------------------------------------------------------------- restarts and teardown

    def restart(self, name: str, *, timeout: float = 90.0) -> None:
        """Restart one component (SIGTERM, then start again with the same settings) and wait until ready."""
        self.cluster.restart_process(name, ready_timeout=timeout)
        if name == PUBLISHER:
            self.wait_gpunodes([n.name for n in self.nodes if n.name not in self.plugin_nodes], timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL a component (a crash, no cleanup) and wait until it is gone."""
        import signal

        proc = self.cluster.processes[name]
        if proc.pid is not None and proc.alive():
            os.kill(proc.pid, signal.SIGKILL)
            wait_for(lambda: not proc.alive(), timeout=10, what=f"{name} to die")

    def down(self) -> None:
        for name in reversed(self._started):
            self.cluster.stop_process(name)
        self._started.clear()
