"""The local cluster for humans: ``python -m e2e.cli up|down|env|logs`` (``python -m e2e.cluster`` is the same).

Usage::

    python -m e2e.cli up [--run-dir DIR]   # starts it and leaves it running, prints the env
    eval "$(python -m e2e.cli env)"        # KUBECONFIG=..., PATH with kubectl 1.36
    python -m e2e.cli down                 # stops the last one started (or --run-dir DIR)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from e2e.cluster import LAST_RUN_LINK, Cluster, ClusterError


def _resolve_run_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("GPUPOOL_E2E_RUN_DIR")
    if env:
        return Path(env)
    if LAST_RUN_LINK.exists():
        return LAST_RUN_LINK.resolve()
    raise SystemExit("no run dir given and no cluster started before (--run-dir DIR)")


def _print_env(c: Cluster) -> None:
    print(f"export KUBECONFIG={c.kubeconfig}")
    print(f"export PATH={c.bin_dir}:$PATH")
    print(f"export GPUPOOL_E2E_RUN_DIR={c.run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description="A real, local Kubernetes control plane for gpupool's e2e tier."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a local control plane with fake GPU nodes and leave it running")
    up.add_argument("--run-dir", help="run directory (default /tmp/gpupool-e2e-<pid>)")
    up.add_argument("--bin-dir", help="binaries (default $GPUPOOL_E2E_BIN or ~/.cache/gpupool/k8s-v1.36.3/bin)")
    up.add_argument("--no-nodes", action="store_true", help="do not create the fake nodes")
    for n in ("down", "env", "logs"):
        sp = sub.add_parser(n)
        sp.add_argument("--run-dir", help="run directory (default: the last one started)")
        if n == "down":
            sp.add_argument("--rm", action="store_true", help="also remove the run directory")
        if n == "logs":
            sp.add_argument("-n", "--lines", type=int, default=30)
    args = ap.parse_args(argv)

    if args.cmd == "up":
        c = Cluster(run_dir=args.run_dir, bin_dir=args.bin_dir)
        try:
            c.up(nodes=not args.no_nodes)
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        c.detach = True  # leave the processes running at exit
        print(
            f"# cluster up in {c.startup_seconds:.1f} s; run dir {c.run_dir}; stop: python -m e2e.cluster down",
            file=sys.stderr,
        )
        _print_env(c)
        return 0
    c = Cluster.attach(_resolve_run_dir(args.run_dir))
    if args.cmd == "env":
        _print_env(c)
    elif args.cmd == "logs":
        print(c.log_tails(args.lines))
    elif args.cmd == "down":
        c.down(remove_run_dir=args.rm)
        print(f"stopped {len(c.processes)} processes of {c.run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
