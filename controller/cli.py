"""The `gpupool` command: `simulate` (trace what-if), `status` (the pool), `explain` (why a pod waits).

It lives with the controller because `status` and `explain` rebuild the controller's own state
(`controller.runtime.Controller`) from the API server and print it (`controller.status` shapes); nothing
is written. `simulate` is the pure simulator's (`gpupool.simulator.cli`), added to the same parser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from controller import status
from gpupool import objects, signing_key
from gpupool.errors import AssignmentError
from gpupool.queues import State
from gpupool.quota import message
from gpupool.signing_key import read_signing_key

if TYPE_CHECKING:  # the Kubernetes client is imported by the cluster commands only, not by `simulate`
    from controller.runtime import Controller


def build_parser() -> argparse.ArgumentParser:
    from gpupool.simulator import cli as simulate_cli

    parser = argparse.ArgumentParser(prog="gpupool", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    simulate_cli.add_parser(sub)
    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


def add_parsers(subparsers: Any) -> None:
    show = subparsers.add_parser("status", help="nodes, GPUs and queues of the pool (from the API server)")
    _common(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.set_defaults(run=run_status)
    explain = subparsers.add_parser("explain", help="why a pod waits (queue position, quota, per-node fit)")
    _common(explain)
    explain.add_argument("pod", metavar="NAMESPACE/POD")
    explain.set_defaults(run=run_explain)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument(
        "--signing-key-file",
        default=signing_key.DEFAULT_PATH,
        help="verify assignments with this key (unreadable: assignments are read unverified)",
    )


def load_state(args: argparse.Namespace) -> Controller:
    from controller.kube import Kube, load_api_client
    from controller.runtime import Controller
    from controller.settings import ControllerSettings

    try:
        key = read_signing_key(args.signing_key_file)
    except AssignmentError:
        key = b""  # status and explain still work; assignments then show as unverified
    kube = Kube(load_api_client(args.kubeconfig))
    settings = ControllerSettings(leader_election=False, webhook_enabled=False, metrics_port=0)
    state = Controller(settings, kube, key)
    asyncio.run(state.rebuild())
    state.manager.schedule()  # what the controller would decide now (reservations included); nothing is written
    return state


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    state = load_state(args)
    nodes = status.node_statuses(state.ledger)
    queues = status.queue_statuses(state.manager)
    if args.json:
        print(json.dumps({"nodes": nodes, "queues": queues}, indent=2, sort_keys=True))
        return 0
    console = Console()
    table = Table(title="GPU nodes")
    for col in ("node", "gpu", "model", "memory MiB", "health", "compute %", "memory MiB used", "slices", "reserved %"):
        table.add_column(col)
    for name, node in sorted(nodes.items()):
        by_uuid = {row["uuid"]: row for row in node["allocated"]}
        for g in state.ledger.gpus_of(name):
            row = by_uuid[g.uuid]
            health = "Healthy" if g.healthy else "[red]Unhealthy[/red]"
            if g.disabled:
                health += " (disabled)"
            table.add_row(name, f"{g.index} {g.uuid[:12]}", g.model, str(g.memory_mib), health,
                          str(row["compute"]), str(row["memoryMiB"]), str(row["slices"]),
                          str(row["reservedCompute"]))  # fmt: skip
    console.print(table)
    qtable = Table(title="GPU queues")
    for col in ("queue", "cohort", "strategy", "pending", "admitted", "compute used/quota", "memory used/quota",
                "borrowed compute"):  # fmt: skip
        qtable.add_column(col)
    for name, queue in sorted(queues.items()):
        spec = state.manager.queues[name]
        qtable.add_row(
            name, spec.cohort or "-", spec.strategy.value, str(queue["pending"]), str(queue["admitted"]),
            queue["computeSummary"], queue["memorySummary"], str(queue["borrowed"]["compute"]),
        )  # fmt: skip
    console.print(qtable)
    totals = state.ledger.totals()
    console.print(
        f"pool: {totals['gpus']} healthy GPUs, compute {totals['used_compute']}/{totals['compute']}, "
        f"memory {totals['used_memory_mib']}/{totals['memory_mib']} MiB (incl. reservations)"
    )
    for where, problem in sorted(state.problems.items()):
        console.print(f"[yellow]problem[/yellow] {where}: {problem}")
    return 0


def explain_lines(state: Controller, namespace: str, name: str) -> list[str]:
    """What `gpupool explain` prints (separate for tests)."""
    pod = next((p for p in state.pods.values() if objects.pod_key(p) == f"{namespace}/{name}"), None)
    if pod is None:
        problem = state.problems.get(f"pod/{namespace}/{name}")
        if problem:
            return [f"pod {namespace}/{name} is invalid: {problem}"]
        return [f"pod {namespace}/{name} is not a gpupool pod (no gpupool resources) or does not exist"]
    uid = objects.pod_uid(pod)
    entry = state.manager.pods.get(uid)
    lines = [f"pod {namespace}/{name} (uid {uid}, priority {entry.request.priority if entry else '?'})"]
    if entry is None:
        return [*lines, "not tracked by the queue manager"]
    holding = state.ledger.holding(uid)
    if entry.assigned is not None:
        lines.append(f"bound to node {entry.assigned.node}:")
        for s in entry.assigned.slices:
            where = "remote" if s.node != entry.assigned.node else "local"
            lines.append(f"  container {s.container}: {s.compute}% / {s.memory_mib} MiB on {s.gpu} "
                         f"({s.node}, {where}, slot {s.slot})")  # fmt: skip
        return lines
    queue_name, position, waiting = state.manager.position(uid)
    label = queue_name if queue_name else "(no queue)"
    if entry.queue_error or queue_name is None:
        lines.append(f"queue: none — {entry.queue_error}")
    else:
        spec = state.manager.queue(queue_name)
        usage = state.manager.usage(queue_name)
        quota_text = "unlimited" if spec is None or queue_name == "" else (
            f"{usage.compute}/{spec.nominal.compute} compute, "
            f"{usage.memory_mib}/{spec.nominal.memory_mib if spec.nominal.memory_mib is not None else '-'} MiB"
        )  # fmt: skip
        lines.append(f"queue: {label}; quota in use {quota_text}")
    if entry.state is State.ADMITTED:
        lines.append(f"admitted (gate removed); reserved on {holding.node if holding else '(no reservation)'}; "
                     "waiting for the gpupool scheduler to bind it")  # fmt: skip
        return lines
    lines.append(f"waiting: {position} of {waiting} in line")
    if entry.nomination is not None:
        lines.append(f"nominated node {entry.nomination.node} (preemption); waiting for "
                     f"{len(entry.nomination.victims)} evicted pod(s) to leave")  # fmt: skip
    shortfall = state.manager.quota_problem(queue_name, entry.charge) if queue_name is not None else None
    if shortfall is not None:
        lines.append(f"quota: {message(shortfall)}")
    nodes = state.manager.eligible_nodes(entry)
    names = state.ledger.node_names() if nodes is None else nodes
    result = state.placer.filter(entry.request, names)
    lines.append(f"fits now on {len(result.passing)} of {len(names)} node(s)" +
                 (f": {', '.join(sorted(result.passing)[:10])}" if result.passing else ""))  # fmt: skip
    for node, reason in sorted({**result.failed, **result.unresolvable}.items()):
        lines.append(f"  {node}: {reason}")
    return lines


def run_explain(args: argparse.Namespace) -> int:
    if "/" not in args.pod:
        print("write NAMESPACE/POD, e.g. team-a/bert-finetune")
        return 2
    namespace, name = args.pod.split("/", 1)
    state = load_state(args)
    for line in explain_lines(state, namespace, name):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
