"""A real node in the local cluster: a kubelet (same Kubernetes version) on containerd + runc, as root.

:class:`RealNode` starts, in a short temporary directory: containerd with its own root, state, socket and a CNI
bridge conflist; the busybox images of e2e/oci.py imported into it; then the kubelet, joined to the
:class:`e2e.cluster.Cluster` with a ``system:node:<name>`` certificate. gpupool's node agent is started on it by
:meth:`e2e.stack.Stack.start_node_agent` with :attr:`RealNode.plugin_dir`. What the host needs and what this
machine's quirks required (cgroup v1, no CAP_SYS_RESOURCE): docs/e2e.md, section "A real node".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e import oci
from e2e.cluster import Cluster
from e2e.nodes import FakeNode
from e2e.pki import issue
from e2e.podresources import PodDevices, allocatable, list_devices
from e2e.polling import wait_for
from e2e.processes import ClusterError, free_port

CNI_BIN = Path("/usr/lib/cni")
#: host programs (Debian packages containerd, runc, containernetworking-plugins, busybox-static)
HOST_NEEDS: Mapping[str, str] = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    str(CNI_BIN / "bridge"): "containernetworking-plugins",
    str(CNI_BIN / "host-local"): "containernetworking-plugins",
    str(CNI_BIN / "loopback"): "containernetworking-plugins",
    str(oci.BUSYBOX): "busybox-static",
}
SUBNET = "10.88.77.0/24"  # the pods' private bridge network
#: the kubelet's device manager ignores --root-dir: its socket path is the constant pluginapi.KubeletSocket
#: (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go, used by pkg/kubelet/cm/devicemanager
#: NewManagerImpl), so one real node per host, and this directory is cleaned by down()
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")


def host_ip() -> str:
    """The address the kubelet reports and listens on: the source address of the default route (the kubelet
    refuses a loopback node IP), or 127.0.0.1 on a host without one. No packet is sent."""
    r = subprocess.run(["ip", "-4", "route", "get", "192.0.2.255"], capture_output=True, text=True, check=False)
    words = r.stdout.split()
    return words[words.index("src") + 1] if "src" in words[:-1] else "127.0.0.1"


def missing(bin_dir: Path) -> list[str]:
    """Why a real node cannot run here (empty: it can): not root, or a program missing (with its package)."""
    out: list[str] = []
    if os.geteuid() != 0:
        out.append("not root (the kubelet and containerd need root)")
    for prog, pkg in HOST_NEEDS.items():
        if not (os.access(prog, os.X_OK) if prog.startswith("/") else shutil.which(prog)):
            out.append(f"{prog} missing (apt-get install {pkg})")
    if not os.access(bin_dir / "kubelet", os.X_OK):
        out.append(f"kubelet not found in {bin_dir} (run e2e/build.sh)")
    return out


class RealNode:
    """One kubelet + containerd pair. ``RealNode(cluster, node).up()``; ``down()`` removes everything it made.

    *node* describes the node's fake GPUs (its name is the kubelet's node name); the GPUs reach the kubelet only
    through gpupool's node agent, which the caller starts with :attr:`plugin_dir`."""

    def __init__(self, cluster: Cluster, node: FakeNode) -> None:
        if not cluster.local:
            raise ClusterError("a real node joins a local cluster (not GPUPOOL_E2E_KUBECONFIG)")
        self.cluster = cluster
        self.node = node
        self.name = node.name
        # short: unix socket paths (containerd, device plugins) are limited to 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="gprn"))
        self.bridge = f"gprn{os.getpid() % 100000}"
        self.kubelet_port = free_port()
        self.healthz_port = free_port()
        self.ip = host_ip()
        self._made_plugin_dirs: list[Path] = []  # what up() created of DEVICE_PLUGIN_DIR (down() removes it)
        self._started_at = time.time()

    def state(self) -> dict[str, Any]:
        """What another process needs to take this node down (``python -m e2e.demo down``)."""
        return {
            "name": self.name,
            "dir": str(self.dir),
            "bridge": self.bridge,
            "started_at": self._started_at,
            "made_plugin_dirs": [str(d) for d in self._made_plugin_dirs],
        }

    @classmethod
    def from_state(cls, cluster: Cluster, state: Mapping[str, Any]) -> RealNode:
        """The node described by :meth:`state`, on *cluster* (re-attached from its ``cluster.json``)."""
        node = cls.__new__(cls)
        node.cluster = cluster
        node.node = FakeNode(str(state["name"]))
        node.name = str(state["name"])
        node.dir = Path(state["dir"])
        node.bridge = str(state["bridge"])
        node.kubelet_port = node.healthz_port = 0
        node.ip = host_ip()
        node._started_at = float(state["started_at"])
        node._made_plugin_dirs = [Path(d) for d in state.get("made_plugin_dirs", [])]
        return node

    # ---------------------------------------------------------------- paths

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def plugin_dir(self) -> Path:
        """The kubelet's device-plugin directory (``kubelet.sock`` appears there): fixed, whatever the root dir."""
        return DEVICE_PLUGIN_DIR

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    @property
    def pod_logs(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def containerd_proc(self) -> str:
        return f"containerd-{self.name}"

    @property
    def kubelet_proc(self) -> str:
        return f"kubelet-{self.name}"

    # ---------------------------------------------------------------- bring-up

    def up(self, timeout: float = 120.0) -> RealNode:
        sock = self.plugin_dir / "kubelet.sock"
        if sock.exists() and self._socket_answers(sock):
            raise ClusterError(f"another kubelet serves {sock}: one real node per host")
        self._made_plugin_dirs = [d for d in (self.plugin_dir.parent, self.plugin_dir) if not d.exists()]
        try:
            self._start_containerd(timeout)
            self.import_images()
            self._start_kubelet(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _write_containerd_config(self) -> Path:
        cni_conf = self.dir / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "gpupool-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": str(self.dir / "ipam")},
                },
                {"type": "loopback"},
            ],
        }
        (cni_conf / "10-gpupool.conflist").write_text(json.dumps(conflist, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        toml = f"""version = 2
root = "{self.dir / 'root'}"
state = "{self.dir / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir / 'opt'}"
[{cri}]
  sandbox_image = "{oci.PAUSE_IMAGE}"
  # no CAP_SYS_RESOURCE here: a negative oom_score_adj makes every runc create fail
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
[{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni_conf}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(toml)
        return path

    def _start_containerd(self, timeout: float) -> None:
        cfg = self._write_containerd_config()
        self.cluster.start_process(
            self.containerd_proc,
            [shutil.which("containerd") or "containerd", f"--config={cfg}"],
            ready_check=lambda: self.ctr("version", check=False).returncode == 0,
            ready_timeout=timeout,
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, in the CRI namespace ``k8s.io``."""
        cmd = [shutil.which("ctr") or "ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def import_images(self, images: Sequence[oci.Image] = oci.IMAGES, tarball: str = "images.tar") -> None:
        """Write *images* as an OCI layout (e2e/oci.py) and import them into this node's containerd."""
        path = self.dir / tarball
        path.write_bytes(oci.image_layout(images))
        self.ctr("images", "import", "--snapshotter", "native", str(path))
        names = self.ctr("images", "ls", "-q").stdout.split()
        for image in images:
            if image.name not in names:
                raise ClusterError(f"{image.name} not in containerd after import (have {names})")

    def _write_kubelet_config(self) -> Path:
        pki = self.cluster.pki
        crt, key = issue(pki, f"node-{self.name}", f"system:node:{self.name}", ["system:nodes"])
        kubeconfig = self.cluster.write_kubeconfig(f"node-{self.name}", client_cert=crt, client_key=key)
        self._kubeconfig = kubeconfig
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # this machine mounts cgroup v1 (hybrid); kubelet >= 1.35 refuses it unless told (KEP-5573)
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.pod_logs),
            "registerNode": True,
            "serializeImagePulls": False,
            "resolvConf": "",
            "nodeStatusReportFrequency": "10s",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _start_kubelet(self, timeout: float) -> None:
        cfg = self._write_kubelet_config()
        self.cluster.start_process(
            self.kubelet_proc,
            [
                self.cluster.bin_dir / "kubelet",
                f"--config={cfg}",
                f"--kubeconfig={self._kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",  # its default is /var/lib/kubelet/pki, not under root-dir
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--v=2",
            ],
            env={"KUBECONFIG": str(self._kubeconfig)},
            ready_url=f"http://127.0.0.1:{self.healthz_port}/healthz",
            ready_timeout=timeout,
        )
        self.cluster.wait_nodes_ready([self.name], timeout=timeout)

    def restart_kubelet(self, timeout: float = 120.0) -> None:
        """Stop the kubelet (containers keep running) and start it again; wait until its node is Ready."""
        self.cluster.restart_process(self.kubelet_proc, ready_timeout=timeout)
        self.cluster.wait_nodes_ready([self.name], timeout=timeout)

    # ---------------------------------------------------------------- what the containers received

    def container_log(self, namespace: str, pod: str, uid: str, container: str, stream: str | None = None) -> str:
        """The container's output (its first run), read from the kubelet's pod-log directory; *stream*
        (``stdout``/``stderr``): that stream only."""
        path = self.pod_logs / f"{namespace}_{pod}_{uid}" / container / "0.log"
        try:
            raw = path.read_text()
        except OSError:
            return ""
        # CRI log format: "<time> <stream> <P|F> <text>"
        parts = [line.split(" ", 3) for line in raw.splitlines() if line.count(" ") >= 3]
        return "\n".join(p[3] for p in parts if stream is None or p[1] == stream)

    def container_env(self, namespace: str, pod: str, uid: str, container: str) -> dict[str, str] | None:
        """The environment the container printed (``env`` then ``---``), or None before it has."""
        text = self.container_log(namespace, pod, uid, container)
        if "\n---" not in "\n" + text:
            return None
        env: dict[str, str] = {}
        for line in text.split("---", 1)[0].splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        return env

    def healthy_devices(self, resource: str) -> int:
        """How many devices of *resource* the kubelet holds healthy and registered (PodResources
        ``GetAllocatableResources``; 0 while the kubelet is down or the plugin not registered)."""
        try:
            return len(allocatable(self.pod_resources_socket).get(resource, []))
        except Exception:  # grpc.RpcError while the kubelet restarts
            return 0

    def pod_devices(self) -> PodDevices:
        """The kubelet's own record (PodResources ``List``)."""
        return list_devices(self.pod_resources_socket)

    # ---------------------------------------------------------------- teardown

    def delete_pods(self, timeout: float = 60.0) -> None:
        """Delete every pod bound to this node (grace 0) and wait until the kubelet confirmed each."""
        from kubernetes import client

        with self.cluster.api_client() as api:
            v1: Any = client.CoreV1Api(api)
            selector = f"spec.nodeName={self.name}"
            for p in v1.list_pod_for_all_namespaces(field_selector=selector).items:
                with contextlib.suppress(Exception):
                    v1.delete_namespaced_pod(p.metadata.name, p.metadata.namespace, grace_period_seconds=0)
            with contextlib.suppress(TimeoutError):
                wait_for(
                    lambda: not v1.list_pod_for_all_namespaces(field_selector=selector).items,
                    timeout=timeout,
                    what=f"the pods of {self.name} to be gone",
                    interval=0.5,
                )

    def down(self) -> None:
        """Stop the kubelet, every container (ctr), containerd; unmount, and remove what the node left."""
        if self._alive(self.kubelet_proc):
            with contextlib.suppress(Exception):
                self.delete_pods()
        self.cluster.stop_process(self.kubelet_proc)
        if self._alive(self.containerd_proc):
            for task in self._lines(self.ctr("tasks", "ls", "-q", check=False).stdout):
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            for task in self._lines(self.ctr("tasks", "ls", "-q", check=False).stdout):
                self.ctr("tasks", "delete", "-f", task, check=False)
            for container in self._lines(self.ctr("containers", "ls", "-q", check=False).stdout):
                self.ctr("containers", "delete", container, check=False)
        self.cluster.stop_process(self.containerd_proc)
        self._unmount_all()
        self._remove_network()
        self._clean_plugin_dir()
        for link in Path("/var/log/containers").glob("*.log"):  # the kubelet's symlinks into our pod-log dir
            with contextlib.suppress(OSError):
                if str(os.readlink(link)).startswith(str(self.dir)):
                    link.unlink()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _socket_answers(path: Path) -> bool:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True

    def _clean_plugin_dir(self) -> None:
        """Remove what the kubelet and the node agent left in the fixed device-plugin directory."""
        for name in ("kubelet.sock", "kubelet_internal_checkpoint", "gpupool.sock"):
            with contextlib.suppress(OSError):
                (self.plugin_dir / name).unlink()
        for d in reversed(self._made_plugin_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty

    def _alive(self, proc: str) -> bool:
        p = self.cluster.processes.get(proc)
        return p is not None and p.alive()

    @staticmethod
    def _lines(text: str) -> list[str]:
        return [t for t in text.split() if t]

    def _mounts_under(self, root: Path) -> list[str]:
        out = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == str(root) or point.startswith(str(root) + "/"):
                    out.append(point)
        return out

    def _unmount_all(self) -> None:
        for _ in range(3):
            points = self._mounts_under(self.dir)
            if not points:
                return
            for point in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_network(self) -> None:
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        netns = Path("/var/run/netns")
        for ns in netns.glob("cni-*") if netns.is_dir() else ():
            with contextlib.suppress(OSError):
                if ns.stat().st_mtime >= self._started_at - 1 and not self._netns_in_use(ns):
                    subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, check=False)

    @staticmethod
    def _netns_in_use(ns: Path) -> bool:
        r = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False)
        return bool(r.stdout.strip())


def real_node_pod(
    name: str,
    node: str,
    *,
    containers: Iterable[Mapping[str, Any]],
    init_containers: Iterable[Mapping[str, Any]] = (),
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod for the real node (gpupool-scheduler, nodeSelector on *node*); each container prints its
    environment, then ``---``, then waits (app containers) or exits (init containers)."""

    def container(c: Mapping[str, Any], *, init: bool) -> dict[str, Any]:
        script = "env; echo ---" if init else "env; echo ---; trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
        out = {"image": "gpupool/busybox:1", "imagePullPolicy": "Never", "command": ["sh", "-c", script], **c}
        return out

    spec: dict[str, Any] = {
        "schedulerName": "gpupool-scheduler",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 0,
        "containers": [container(c, init=False) for c in containers],
    }
    inits = [container(c, init=True) for c in init_containers]
    if inits:
        spec["initContainers"] = inits
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": spec,
    }
