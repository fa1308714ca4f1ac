"""A real, local Kubernetes control plane for gpupool's e2e tier (no Docker): the bring-up.

Starts, on free loopback ports and in one run directory: certificates (e2e/pki.py) and one kubeconfig per
identity, etcd, kube-apiserver, kube-controller-manager, the default kube-scheduler and kwok, then creates fake
GPU Nodes (e2e/nodes.py). gpupool's own processes (extender, gpupool-scheduler, controller, node agent) are
plugged in with :meth:`Cluster.start_process` (supervised by e2e/processes.py) and
:meth:`Cluster.start_gpupool_scheduler`. The command line is e2e/cli.py.

Recipe: ``docs/e2e.md`` and the shared ``e2e-control-plane.md``. Binaries come from ``e2e/build.sh``.

As a library::

    with Cluster() as c:                       # or c = Cluster(); c.up(); ...; c.down()
        v1 = kubernetes.client.CoreV1Api(c.api_client())
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.nodes import DEFAULT_NODES, KWOK_ANNOTATION, NODE_GRACE_SECONDS, FakeNode, kwok_config
from e2e.pki import write_pki
from e2e.processes import ClusterError, ManagedProcess, Supervisor, free_port

__all__ = [  # the names tests and tools import from here (their homes are the modules named above)
    "AUDIT_NODES",
    "DEFAULT_NODES",
    "K8S_VERSION",
    "REPO_ROOT",
    "TEMPLATES",
    "Cluster",
    "ClusterError",
    "FakeNode",
    "default_bin_dir",
    "free_port",
    "missing_binaries",
]

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.14"

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
LAST_RUN_LINK = Path("/tmp/gpupool-e2e-last")

#: an audit policy for `Cluster(audit_policy=...)`: every request on Nodes (and nothing else), metadata only; a
#: watch is logged when it starts (ResponseStarted) and when it ends (ResponseComplete)
AUDIT_NODES: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "resources": [{"group": "", "resources": ["nodes", "nodes/status"]}]},
              {"level": "None"}],
}  # fmt: skip

# Binaries the local control plane needs (kubectl is optional for the harness, needed by humans/tests).
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")


def default_bin_dir() -> Path:
    """``$GPUPOOL_E2E_BIN`` or ``~/.cache/gpupool/k8s-v1.36.3/bin`` (where e2e/build.sh puts the binaries)."""
    env = os.environ.get("GPUPOOL_E2E_BIN")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gpupool" / f"k8s-{K8S_VERSION}" / "bin"


def missing_binaries(bin_dir: Path | None = None) -> list[str]:
    """Names of the required binaries that are not executable files in *bin_dir*."""
    d = bin_dir or default_bin_dir()
    return [b for b in REQUIRED_BINARIES if not os.access(d / b, os.X_OK)]


class Cluster:
    """A local control plane (``Cluster(...).up()``) or a handle on an existing one (``Cluster.external()``).

    Everything lives in ``run_dir``: ``pki/``, ``*.kubeconfig``, ``logs/<name>.log``, ``etcd/``, configs, and
    ``cluster.json`` (ports and PIDs, used by ``python -m e2e.cluster down``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        nodes: Iterable[FakeNode] = DEFAULT_NODES,
        audit_policy: Mapping[str, Any] | None = None,
        profiling: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir) if run_dir else Path(f"/tmp/gpupool-e2e-{os.getpid()}")
        #: an audit.k8s.io/v1 Policy: kube-apiserver then writes its JSON audit log to `audit_log` (a diagnosis
        #: aid, e.g. which client opens which watches: bench/e2e_throughput.py --audit-nodes); None = no audit
        self.audit_policy = dict(audit_policy) if audit_policy is not None else None
        #: kube-apiserver serves /debug/pprof (a diagnosis aid: bench/e2e_throughput.py --pprof); off by default
        self.profiling = profiling
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self.nodes: list[FakeNode] = list(nodes)
        self.local = True
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds after up() began at which each step was ready
        self._t0: float | None = None
        self._kubeconfig: Path | None = None
        self._ssl_admin: ssl.SSLContext | None = None
        self.supervisor = Supervisor(
            self.log_dir,
            base_env=lambda: {"KUBECONFIG": str(self.kubeconfig)},
            probe=self.probe,
            on_change=self._save_state,
        )

    # ---------------------------------------------------------------- construction

    @classmethod
    def external(cls, kubeconfig: str | os.PathLike[str], bin_dir: str | os.PathLike[str] | None = None) -> Cluster:
        """A handle on an existing cluster (kind, ...): no processes are started, nothing is torn down."""
        c = cls(run_dir=Path(f"/tmp/gpupool-e2e-ext-{os.getpid()}"), bin_dir=bin_dir, nodes=())
        c.local = False
        c._kubeconfig = Path(kubeconfig).expanduser().resolve()
        return c

    @classmethod
    def attach(cls, run_dir: str | os.PathLike[str]) -> Cluster:
        """Re-open a cluster started elsewhere (``python -m e2e.cluster up``) from its ``cluster.json``."""
        rd = Path(run_dir)
        state = json.loads((rd / "cluster.json").read_text())
        c = cls(run_dir=rd, bin_dir=state["bin_dir"], nodes=())
        c.ports = {k: int(v) for k, v in state["ports"].items()}
        c._kubeconfig = rd / "admin.kubeconfig"
        for p in state["processes"]:
            c.processes[p["name"]] = ManagedProcess.from_state(p)
        return c

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---------------------------------------------------------------- paths and clients

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters)."""
        return self._kubeconfig or self.run_dir / "admin.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.run_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def audit_log(self) -> Path:
        """kube-apiserver's JSON audit log (written only with an `audit_policy`)."""
        return self.log_dir / "kube-apiserver-audit.log"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def kubeconfig_for(self, identity: str) -> Path:
        """Kubeconfig of a built-in identity: ``admin``, ``scheduler`` or ``kcm``."""
        return self.run_dir / f"{identity}.kubeconfig"

    def binary(self, name: str) -> str:
        """Path of a binary from the e2e bin dir, else from PATH (e.g. kubectl for an external cluster)."""
        p = self.bin_dir / name
        if os.access(p, os.X_OK):
            return str(p)
        found = shutil.which(name)
        if not found:
            raise ClusterError(f"{name} not found in {self.bin_dir} or PATH (run e2e/build.sh)")
        return found

    def env(self) -> dict[str, str]:
        """Environment for tools and components: KUBECONFIG, and PATH with the bin dir first."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def api_client(self) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (v1.36 from the bin dir) against this cluster; raises on a nonzero exit if *check*."""
        cmd = [self.binary("kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def write_kubeconfig(
        self,
        name: str,
        *,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        token: str | None = None,
    ) -> Path:
        """Write ``<run_dir>/<name>.kubeconfig`` for a client cert pair or a bearer token."""
        user: dict[str, str] = {}
        if token is not None:
            user["token"] = token
        if client_cert is not None and client_key is not None:
            user["client-certificate"] = str(client_cert)
            user["client-key"] = str(client_key)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.api_url, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
            "current-context": "e2e",
        }
        path = self.run_dir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)
        return path

    def kubeconfig_for_serviceaccount(self, name: str, namespace: str, *, seconds: int = 3600) -> Path:
        """Mint a token for an existing ServiceAccount (TokenRequest) and write a kubeconfig using it."""
        from kubernetes import client

        with self.api_client() as api:
            v1: Any = client.CoreV1Api(api)
            tr = v1.create_namespaced_service_account_token(name, namespace, {"spec": {"expirationSeconds": seconds}})
        return self.write_kubeconfig(f"sa-{namespace}-{name}", token=tr.status.token)

    # ---------------------------------------------------------------- HTTP probes

    def _ssl_for(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("https://"):
            return None
        if self.local and "apiserver" in self.ports and url.startswith(self.api_url):
            if self._ssl_admin is None:
                ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
                ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
                self._ssl_admin = ctx
            return self._ssl_admin
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # component /healthz on loopback, self-signed serving certs
        return ctx

    def probe(self, url: str, timeout: float = 2.0) -> bool:
        """True when GET *url* answers 200 (apiserver URLs use the admin cert)."""
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=self._ssl_for(url)) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    # ---------------------------------------------------------------- processes (e2e/processes.py)

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        """Every process started, in start order."""
        return self.supervisor.processes

    @property
    def detach(self) -> bool:
        """True: leave the processes running when the interpreter exits (CLI ``up``)."""
        return self.supervisor.detach

    @detach.setter
    def detach(self, value: bool) -> None:
        self.supervisor.detach = value

    def start_process(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        *,
        ready_check: Callable[[], bool] | None = None,
        ready_timeout: float = 60.0,
        cwd: str | os.PathLike[str] | None = None,
        wait: bool = True,
    ) -> ManagedProcess:
        """Start *argv* as process *name*; stdout+stderr go to ``logs/<name>.log`` (appended on restart).

        *env* is added to the current environment (plus KUBECONFIG of the admin, unless *env* sets it).
        If *ready_url* (GET must answer 200) or *ready_check* is given and *wait* is true, wait up to
        *ready_timeout* seconds; raises :class:`ClusterError` with the log tail if it exits or times out.
        """
        if not self.local:
            raise ClusterError("start_process() needs a local cluster (not GPUPOOL_E2E_KUBECONFIG)")
        proc = self.supervisor.start(name, argv, env, ready_url, ready_check=ready_check, cwd=cwd)
        if wait and (ready_url or ready_check):
            self.wait_ready(name, timeout=ready_timeout)
        return proc

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        """Poll the readiness of process *name* (its ready_url or ready_check)."""
        self.supervisor.wait_ready(name, timeout)
        if self._t0 is not None and self.startup_seconds is None:
            self.timings[name] = round(time.monotonic() - self._t0, 2)

    def stop_process(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM process *name* by PID, then SIGKILL after *timeout* seconds. No error if it is gone."""
        self.supervisor.stop(name, timeout)

    def restart_process(self, name: str, *, wait: bool = True, ready_timeout: float = 60.0) -> ManagedProcess:
        """Stop process *name* and start it again with the same argv/env/readiness; the log is appended to."""
        proc = self.processes[name]
        self.supervisor.stop(name)
        self.supervisor.spawn(proc)
        self._save_state()
        if wait and (proc.ready_url or proc.ready_check):
            self.wait_ready(name, timeout=ready_timeout)
        return proc

    def log_tails(self, lines: int = 30, names: Iterable[str] | None = None) -> str:
        """The last *lines* of every process log (or of *names*), for test failure reports."""
        return self.supervisor.log_tails(lines, names)

    def _save_state(self) -> None:
        if not self.local:
            return
        state = {
            "bin_dir": str(self.bin_dir),
            "ports": self.ports,
            "kubeconfig": str(self.kubeconfig),
            "processes": [p.state() for p in self.processes.values()],
        }
        tmp = self.run_dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "cluster.json")

    # ---------------------------------------------------------------- bring-up

    def up(self, *, kwok: bool = True, nodes: bool = True, timeout: float = 90.0) -> Cluster:
        """Start certs, etcd, apiserver, KCM, default scheduler, kwok; create fake nodes; wait until Ready."""
        if not self.local:
            return self
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ClusterError(f"k8s binaries not found in {self.bin_dir}: {', '.join(missing)} (run e2e/build.sh)")
        t0 = self._t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("etcd", "logs"):  # always a fresh cluster (and fresh logs) in a reused run dir
            shutil.rmtree(self.run_dir / stale, ignore_errors=True)
        self.log_dir.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            if LAST_RUN_LINK.is_symlink() or not LAST_RUN_LINK.exists():
                LAST_RUN_LINK.unlink(missing_ok=True)
                LAST_RUN_LINK.symlink_to(self.run_dir.resolve())
        for k in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok"):
            self.ports[k] = free_port()
        try:
            self._bring_up(kwok=kwok, nodes=nodes, timeout=timeout)
        except BaseException:
            self.down()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _bring_up(self, *, kwok: bool, nodes: bool, timeout: float) -> None:
        write_pki(self.pki)
        self.timings["pki"] = round(time.monotonic() - (self._t0 or 0), 2)
        self._kubeconfig = self.write_kubeconfig(
            "admin", client_cert=self.pki / "admin.crt", client_key=self.pki / "admin.key"
        )
        self.write_kubeconfig(
            "scheduler", client_cert=self.pki / "scheduler.crt", client_key=self.pki / "scheduler.key"
        )
        self.write_kubeconfig("kcm", client_cert=self.pki / "kcm.crt", client_key=self.pki / "kcm.key")

        p = self.ports
        b = self.bin_dir
        pki = self.pki
        self.start_process(
            "etcd",
            [
                b / "etcd",
                "--name=gpupool-e2e",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-cluster=gpupool-e2e=http://127.0.0.1:{p['etcd_peer']}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            ready_url=f"http://127.0.0.1:{p['etcd']}/health",
            ready_timeout=timeout,
        )
        audit: list[str] = []
        if self.audit_policy is not None:
            policy = self.run_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(self.audit_policy, sort_keys=False))
            audit = [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                     "--audit-log-format=json", "--audit-log-maxsize=0"]  # fmt: skip
        self.start_process(
            "kube-apiserver",
            [
                b / "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                # a requestheader CA keeps KCM/schedulers' delegated authn from logging errors every second
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--service-account-issuer={self.api_url}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                f"--profiling={'true' if self.profiling else 'false'}",
                "--endpoint-reconciler-type=none",
                *audit,
            ],
            ready_url=f"{self.api_url}/readyz",
            ready_timeout=timeout,
        )
        self.start_process(
            "kube-controller-manager",
            [
                b / "kube-controller-manager",
                f"--kubeconfig={self.kubeconfig_for('kcm')}",
                f"--authentication-kubeconfig={self.kubeconfig_for('kcm')}",
                f"--authorization-kubeconfig={self.kubeconfig_for('kcm')}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                # true (as kubeadm): each controller gets its own SA token; with false they all run as
                # system:kube-controller-manager, which lacks e.g. clusterrole aggregation and ConfigMap rights
                "--use-service-account-credentials=true",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kcm']}",
                "--profiling=false",
                f"--cert-dir={self.run_dir / 'kcm-certs'}",
                # kwok's long node lease (e2e/nodes.py): nodes stay Ready between its renewals
                f"--node-monitor-grace-period={NODE_GRACE_SECONDS}s",
                f"--node-startup-grace-period={NODE_GRACE_SECONDS}s",
            ],
            ready_url=f"https://127.0.0.1:{p['kcm']}/healthz",
            wait=False,
        )
        sched_cfg = self.run_dir / "sched-default.yaml"
        sched_cfg.write_text(self.render_scheduler_config(TEMPLATES / "sched-default.yaml"))
        self.start_process(
            "kube-scheduler",
            [
                b / "kube-scheduler",
                f"--config={sched_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--authentication-kubeconfig={self.kubeconfig_for('scheduler')}",
                f"--authorization-kubeconfig={self.kubeconfig_for('scheduler')}",
                f"--cert-dir={self.run_dir / 'scheduler-certs'}",
            ],
            ready_url=f"https://127.0.0.1:{p['scheduler']}/healthz",
            wait=False,
        )
        if kwok:
            stages = self.run_dir / "kwok-stages.yaml"
            stages.write_text(kwok_config())
            self.start_process(
                "kwok",
                [
                    b / "kwok",
                    f"--kubeconfig={self.kubeconfig}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                    "--cidr=10.244.0.1/16",
                    "--node-ip=10.0.1.1",
                    f"--server-address=127.0.0.1:{p['kwok']}",
                    f"--node-port={p['kwok']}",
                    f"--config={stages}",
                ],
                ready_url=f"http://127.0.0.1:{p['kwok']}/healthz",
                wait=False,
            )
        if nodes and self.nodes:
            self.apply_nodes(self.nodes)
        for n in ("kube-controller-manager", "kube-scheduler", "kwok"):
            if n in self.processes:
                self.wait_ready(n, timeout=timeout)
        # KCM is really working once its serviceaccount controller has made default/default; test
        # namespaces then get their ServiceAccount quickly (ServiceAccount admission needs it for pods).
        self.create_namespace("default", timeout=timeout)
        self.timings["default-serviceaccount"] = round(time.monotonic() - (self._t0 or 0), 2)
        if kwok and nodes and self.nodes:
            self.wait_nodes_ready([n.name for n in self.nodes], timeout=timeout)
            self.timings["nodes-ready"] = round(time.monotonic() - (self._t0 or 0), 2)

    # ---------------------------------------------------------------- scheduler configs

    def render_scheduler_config(
        self, template: str | os.PathLike[str], extender_url: str | None = None, **values: str
    ) -> str:
        """Render a KubeSchedulerConfiguration: *template* is a path or YAML text with ``${KUBECONFIG}``,
        ``${EXTENDER_URL}`` (and *values*) placeholders. ``clientConnection.kubeconfig`` is forced to the
        scheduler identity's kubeconfig, leader election is switched off, and if *extender_url* is given it
        becomes ``urlPrefix`` of the (single) extender."""
        text = Path(template).read_text() if isinstance(template, os.PathLike) else str(template)
        if "\n" not in text and Path(text).is_file():
            text = Path(text).read_text()
        subst = {
            "KUBECONFIG": str(self.kubeconfig_for("scheduler")),
            "EXTENDER_URL": extender_url or "",
            **values,
        }
        text = string.Template(text).safe_substitute(subst)
        cfg = yaml.safe_load(text)
        cfg.setdefault("clientConnection", {})["kubeconfig"] = str(self.kubeconfig_for("scheduler"))
        cfg["leaderElection"] = {"leaderElect": False}
        if extender_url is not None:
            exts = cfg.get("extenders") or []
            if len(exts) != 1:
                raise ClusterError(f"expected exactly one extender in the scheduler config, found {len(exts)}")
            exts[0]["urlPrefix"] = extender_url
        return str(yaml.safe_dump(cfg, sort_keys=False))

    def start_gpupool_scheduler(
        self,
        extender_url: str,
        *,
        config_yaml: str | None = None,
        name: str = "gpupool-scheduler",
        verbosity: int = 3,
        wait: bool = True,
    ) -> ManagedProcess:
        """Start the second kube-scheduler (schedulerName ``gpupool-scheduler``) with the extender at
        *extender_url*. The config comes from *config_yaml* (e.g. rendered from the Helm chart) or from
        ``e2e/templates/sched-gpupool.yaml``."""
        port = free_port()
        self.ports[name] = port
        cfg = self.run_dir / f"{name}.yaml"
        cfg.write_text(self.render_scheduler_config(config_yaml or (TEMPLATES / "sched-gpupool.yaml"), extender_url))
        return self.start_process(
            name,
            [
                self.bin_dir / "kube-scheduler",
                f"--config={cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--authentication-kubeconfig={self.kubeconfig_for('scheduler')}",
                f"--authorization-kubeconfig={self.kubeconfig_for('scheduler')}",
                f"--cert-dir={self.run_dir / (name + '-certs')}",
                f"--v={verbosity}",
            ],
            ready_url=f"https://127.0.0.1:{port}/healthz",
            wait=wait,
        )

    # ---------------------------------------------------------------- nodes and namespaces

    def apply_nodes(self, nodes: Iterable[FakeNode]) -> None:
        """Create (or replace) fake kwok Nodes, status included."""
        from concurrent.futures import ThreadPoolExecutor

        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.api_client() as api:
            v1: Any = client.CoreV1Api(api)  # dict bodies; the client validates them

            def apply(n: FakeNode) -> None:
                body = n.manifest()
                try:
                    v1.create_node(body, _preload_content=False)  # no V1Node model built: 1,000s of nodes
                except ApiException as e:
                    if e.status != 409:
                        raise
                    v1.patch_node(n.name, {"metadata": body["metadata"], "spec": body["spec"]})
                    v1.patch_node_status(n.name, {"status": body["status"]})

            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="apply-node") as pool:
                list(pool.map(apply, nodes))

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every named Node has condition Ready=True."""
        from kubernetes import client

        want = set(names)
        deadline = time.monotonic() + timeout
        with self.api_client() as api:
            v1: Any = client.CoreV1Api(api)  # dict bodies; the client validates them
            while True:
                # raw JSON: building V1Node models of 1,000s of nodes every poll took the CPU kwok needed
                listed = json.loads(v1.list_node(_preload_content=False).data)
                ready = {
                    n["metadata"]["name"]
                    for n in listed.get("items") or []
                    if any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or []
                    )
                }
                if want <= ready:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"nodes not Ready after {timeout:.0f} s: {sorted(want - ready)}\n"
                        + self.log_tails(20, ["kwok"])
                    )
                time.sleep(0.25 if len(want) <= 100 else 2.0 if len(want) <= 1000 else 5.0)

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create a namespace and wait for its ``default`` ServiceAccount (made by KCM; ServiceAccount
        admission refuses pods until it exists)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.api_client() as api:
            v1: Any = client.CoreV1Api(api)  # dict bodies; the client validates them
            try:
                v1.create_namespace({"metadata": {"name": name}})
            except ApiException as e:
                if e.status != 409:
                    raise
            deadline = time.monotonic() + timeout
            while True:
                try:
                    v1.read_namespaced_service_account("default", name)
                    return
                except ApiException as e:
                    if e.status != 404 or time.monotonic() > deadline:
                        raise
                time.sleep(0.1)

    # ---------------------------------------------------------------- teardown

    def down(self, *, remove_run_dir: bool = False) -> None:
        """Stop every process in reverse start order (SIGTERM, then SIGKILL by PID)."""
        if not self.local:
            return
        self.supervisor.stop_all()
        if remove_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                if LAST_RUN_LINK.is_symlink() and not LAST_RUN_LINK.exists():
                    LAST_RUN_LINK.unlink()


if __name__ == "__main__":  # `python -m e2e.cluster up|down|env|logs`, as documented before e2e/cli.py existed
    from e2e.cli import main

    sys.exit(main())
