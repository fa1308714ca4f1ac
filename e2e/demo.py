"""``make demo``: a local Kubernetes cluster with fake GPUs, gpupool installed, a sample workload, the pool shown.

    python -m e2e.demo up       # build or reuse the binaries, start everything, submit e2e/demo/*.yaml, print the pool
    python -m e2e.demo status   # which processes run, and `gpupool status`
    python -m e2e.demo down     # stop every process by PID (from <run dir>/cluster.json); --rm removes the run dir

Everything lives in the run directory (default ``/tmp/gpupool-demo``, or ``--run-dir`` / ``$GPUPOOL_DEMO_DIR``):
kubeconfigs, logs, ``cluster.json`` (PIDs of the control plane *and* of gpupool's processes) and ``demo.json``.
The processes run in their own sessions, so they outlive ``up``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e import realnode
from e2e.cluster import REPO_ROOT, Cluster, ClusterError, missing_binaries
from e2e.nodes import FakeNode
from e2e.polling import wait_for
from e2e.stack import Stack

REAL_NODE = FakeNode("real-0", gpus=2, gpu_model="A100-80GB", gpu_memory_mib=81920)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEFAULT_RUN_DIR = Path(os.environ.get("GPUPOOL_DEMO_DIR", "/tmp/gpupool-demo"))


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def gpupool_status(c: Cluster, key_file: Path) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "controller.cli", "status", "--kubeconfig", str(c.kubeconfig),
         "--signing-key-file", str(key_file)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": os.environ.get("COLUMNS", "140")},
    )  # fmt: skip
    return r.stdout + (f"\n(gpupool status exited {r.returncode}: {r.stderr.strip()})" if r.returncode else "")


def _running(run_dir: Path) -> bool:
    if not (run_dir / "cluster.json").is_file():
        return False
    try:
        c = Cluster.attach(run_dir)
    except (OSError, ValueError, KeyError):
        return False
    return any(p.alive() for p in c.processes.values())


def up(run_dir: Path, *, build: bool = True) -> int:
    t0 = time.monotonic()
    if _running(run_dir):
        say(f"a demo is already running in {run_dir}: stopping it first")
        down(run_dir)
    if build:
        say("building or reusing the Kubernetes binaries (bash e2e/build.sh)")
        r = subprocess.run(["bash", str(REPO_ROOT / "e2e" / "build.sh")], cwd=REPO_ROOT, check=False)
        if r.returncode != 0:
            say(f"e2e/build.sh failed ({r.returncode})")
            return 1
    missing = missing_binaries()
    if missing:
        say(f"missing binaries: {', '.join(missing)} (run e2e/build.sh)")
        return 1
    c = Cluster(run_dir=run_dir)
    c.detach = True  # the processes outlive this command; `down` stops them by PID
    say(f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok in {run_dir}")
    try:
        c.up()
        say(f"control plane + {len(c.nodes)} kwok nodes ready in {c.startup_seconds:.1f} s")
        stack = Stack(c)
        stack.up()
        say(
            f"gpupool installed in {sum(1 for _ in stack.timings) and max(stack.timings.values()):.1f} s: "
            f"CRDs, controller + webhooks, extender, gpupool-scheduler ({stack.scheduler_config_source} config), "
            "node agent publishing the fake GPUs"
        )
    except (ClusterError, TimeoutError) as e:
        say(f"start-up failed: {e}")
        c.detach = False
        c.down()
        return 1
    meta: dict[str, Any] = {"key_file": str(stack.key_file), "extender": stack.extender_url, "ports": stack.ports}
    (run_dir / "demo.json").write_text(json.dumps(meta, indent=2))
    real = start_real_node(c, stack)
    if real is not None:
        meta["real_node"] = real.state()
        (run_dir / "demo.json").write_text(json.dumps(meta, indent=2))

    files = sorted(DEMO_DIR.glob("*.yaml"))
    pods: list[tuple[str, str]] = []
    for f in files:
        docs = _docs(f)
        for d in docs:
            if d.get("kind") == "Namespace":
                c.create_namespace(d["metadata"]["name"])  # and wait for its default ServiceAccount
        c.kubectl("apply", "-f", str(f))
        pods += [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d.get("kind") == "Pod"]
        say(f"applied {f.relative_to(REPO_ROOT)}")

    def unbound() -> list[str]:
        r = c.kubectl("get", "pods", "-A", "-o", "json")
        bound = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in json.loads(r.stdout)["items"]
                 if p["spec"].get("nodeName")}  # fmt: skip
        return [f"{ns}/{n}" for ns, n in pods if (ns, n) not in bound]

    try:
        wait_for(lambda: not unbound(), timeout=120, what=f"{len(pods)} demo pods bound", interval=0.5)
        say(f"all {len(pods)} demo pods are bound")
    except TimeoutError:
        say(f"still waiting: {unbound()} (see `gpupool explain NAMESPACE/POD`)")
    print(c.kubectl("get", "pods", "-A", "-l", "app in (trainer,inference)", "-o", "wide").stdout)
    print(c.kubectl("get", "gpuqueues").stdout)
    print(gpupool_status(c, stack.key_file))
    if real is not None:
        show_real_node_pod(c, real)
    total = time.monotonic() - t0
    say(f"demo up in {total:.0f} s. The cluster keeps running.")
    print(
        f"""
Point kubectl at it:
  export KUBECONFIG={c.kubeconfig}
  export PATH={c.bin_dir}:$PATH          # kubectl {c.bin_dir / "kubectl"} (v1.36, matches the API server)
  kubectl get gpunodes,gpuqueues
  kubectl get pods -A -o wide
  .venv/bin/gpupool status --signing-key-file {stack.key_file}
  .venv/bin/gpupool explain team-train/train-0 --signing-key-file {stack.key_file}
Logs: {c.log_dir}/   (extender: /debug/pool at {stack.extender_url}/debug/pool)
Stop it: make demo-down   (or: .venv/bin/python -m e2e.demo down --run-dir {run_dir})
"""
    )
    return 0


def start_real_node(c: Cluster, stack: Stack) -> realnode.RealNode | None:
    """A real kubelet + containerd node with gpupool's node agent (root and Debian's runtime needed)."""
    reasons = realnode.missing(c.bin_dir)
    if reasons:
        say("no real node: " + "; ".join(reasons))
        return None
    say(f"starting a real node {REAL_NODE.name}: containerd + runc, the kubelet, gpupool's node agent")
    node = realnode.RealNode(c, REAL_NODE)
    try:
        node.up()
        stack.start_node_agent(REAL_NODE.name, node.plugin_dir, gpus=REAL_NODE.inventory())
        wait_for(lambda: node.healthy_devices("gpupool.io/gpu") == REAL_NODE.gpu_slots, timeout=90,
                 what="the kubelet to hold gpupool's slots", interval=0.5)  # fmt: skip
    except (ClusterError, TimeoutError) as e:
        say(f"the real node did not come up: {e}")
        node.down()
        return None
    return node


def show_real_node_pod(c: Cluster, node: realnode.RealNode) -> None:
    """One fractional pod on the real node, and what its container received."""
    ns = "demo-real"
    c.create_namespace(ns)
    body = realnode.real_node_pod(
        "hello-real", node.name,
        containers=[{"name": "main", "resources": {"limits": {
            "gpupool.io/gpu": "1", "gpupool.io/gpu-compute": "30", "gpupool.io/gpu-memory": "8192"}}}],
    )  # fmt: skip
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))

    def env() -> dict[str, str] | None:
        pod = json.loads(c.kubectl("get", "pod", "-n", ns, "hello-real", "-o", "json").stdout)
        if pod["status"].get("phase") != "Running":
            return None
        return node.container_env(ns, "hello-real", pod["metadata"]["uid"], "main")

    try:
        got = wait_for(env, timeout=120, what="hello-real running on the real node", interval=0.5)
    except TimeoutError as e:
        say(f"{e}")
        return
    say(f"pod {ns}/hello-real runs on the real node {node.name}; its container received:")
    for k in sorted(got):
        if k.startswith(("GPUPOOL_", "NVIDIA_", "CUDA_")):
            print(f"  {k}={got[k]}")


def down(run_dir: Path, *, remove: bool = False) -> int:
    if not (run_dir / "cluster.json").is_file():
        say(f"no demo in {run_dir}")
        return 0
    c = Cluster.attach(run_dir)
    meta = json.loads((run_dir / "demo.json").read_text()) if (run_dir / "demo.json").is_file() else {}
    if meta.get("real_node"):
        node = realnode.RealNode.from_state(c, meta["real_node"])
        c.stop_process(f"node-agent-{node.name}")  # first: it would serve its socket again in the plugin dir
        node.down()
    n = sum(1 for p in c.processes.values() if p.alive())
    c.down(remove_run_dir=remove)
    say(f"stopped {n} processes of {run_dir}" + (" and removed it" if remove else ""))
    return 0


def status(run_dir: Path) -> int:
    if not (run_dir / "cluster.json").is_file():
        say(f"no demo in {run_dir}")
        return 1
    c = Cluster.attach(run_dir)
    for name, p in c.processes.items():
        print(f"{name:26} pid {p.pid!s:8} {'running' if p.alive() else 'stopped'}")
    meta = json.loads((run_dir / "demo.json").read_text()) if (run_dir / "demo.json").is_file() else {}
    if all(p.alive() for p in c.processes.values()):
        print(gpupool_status(c, Path(meta.get("key_file", "/nonexistent"))))
    print(f"export KUBECONFIG={c.kubeconfig}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=("up", "down", "status"))
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    ap.add_argument("--no-build", action="store_true", help="up: do not run e2e/build.sh")
    ap.add_argument("--rm", action="store_true", help="down: also remove the run directory")
    args = ap.parse_args(argv)
    if args.cmd == "up":
        return up(args.run_dir, build=not args.no_build)
    if args.cmd == "down":
        return down(args.run_dir, remove=args.rm)
    return status(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
