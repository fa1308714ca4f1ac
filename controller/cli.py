"""The `gpupool` command: `simulate` (trace what-if), `status` (the pool), `explain` (why a pod waits), `snapshot`.

It lives with the controller because `status` and `explain` rebuild the controller's own state
(`controller.runtime.Controller`) from the API server and print it (`controller.status` shapes); nothing
is written. They show the live state and what the controller published (`explain`: the pod's
`gpupool.io/Admission` condition); a simulated admission pass is printed only as a labelled what-if.
`simulate` is the pure simulator's (`gpupool.simulator.cli`), added to the same parser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from controller import status
from gpupool import groups, objects, resize, resources, signing_key, timefmt
from gpupool.assignment import KeySet
from gpupool.errors import AssignmentError, GpupoolError
from gpupool.quota import Resources, message
from gpupool.signing_key import read_keys

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
    add_resize_parser(subparsers)
    snap = subparsers.add_parser(
        "snapshot", help="write the pool's nodes, GPUs, queues and pods as JSON (for `simulate --timeline --snapshot`)"
    )
    snap.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    snap.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    snap.set_defaults(run=run_snapshot)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument(
        "--signing-key-file",
        default=signing_key.DEFAULT_PATH,
        help="verify assignments with these keys: the mounted Secret directory or one key file "
        "(unreadable: assignments are read unverified)",
    )


def load_state(args: argparse.Namespace) -> Controller:
    from controller.kube import Kube, load_api_client
    from controller.runtime import Controller
    from controller.settings import ControllerSettings

    try:
        key: bytes | KeySet = read_keys(args.signing_key_file)
    except AssignmentError:
        key = b""  # status and explain still work; assignments then show as unverified
    kube = Kube(load_api_client(args.kubeconfig))
    settings = ControllerSettings(leader_election=False, webhook_enabled=False, metrics_port=0)
    state = Controller(settings, kube, key)
    asyncio.run(state.rebuild())  # the live state only: no simulated admission pass is taken for the truth
    asyncio.run(state.read_owners(time.time()))  # the owners that size pod groups
    return state


def pods_per_key(state: Controller) -> dict[str, int]:
    """How many live pods' assignments each key id verifies ("unverified": no key at hand; "none": no key
    verifies it, the pod is quarantined). A retired key must show none (charts/gpupool/README.md)."""
    from gpupool import assignment as assignment_format

    out: dict[str, int] = {}
    for pod in state.pods.values():
        text = objects.pod_assignment_text(pod)
        if text is None or objects.pod_is_terminal(pod):
            continue
        try:
            record = assignment_format.parse(text)
        except AssignmentError:
            kid: str | None = None
        else:
            kid = assignment_format.key_id_of(record, state.key) if state.key else "unverified"
        out[kid or "none"] = out.get(kid or "none", 0) + 1
    return dict(sorted(out.items()))


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    state = load_state(args)
    nodes = status.node_statuses(state.ledger)
    queues = status.queue_statuses(state.manager)
    quarantined = {state._key(uid): why for uid, why in sorted(state.quarantined.items())}
    per_key = pods_per_key(state)
    if args.json:
        print(json.dumps({"nodes": nodes, "queues": queues, "quarantined": quarantined, "podsPerKey": per_key},
                         indent=2, sort_keys=True))  # fmt: skip
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
                "borrowed compute", "weight", "share %", "fair share %"):  # fmt: skip
        qtable.add_column(col)
    for name, queue in sorted(queues.items()):
        spec = state.manager.queues[name]
        qtable.add_row(
            name, spec.cohort or "-", spec.strategy.value, str(queue["pending"]), str(queue["admitted"]),
            queue["computeSummary"], queue["memorySummary"], str(queue["borrowed"]["compute"]),
            f"{float(spec.weight):g}", str(queue["sharePercent"]), str(queue["fairSharePercent"]),
        )  # fmt: skip
    console.print(qtable)
    totals = state.ledger.totals()
    console.print(
        f"pool: {totals['gpus']} healthy GPUs, compute {totals['used_compute']}/{totals['compute']}, "
        f"memory {totals['used_memory_mib']}/{totals['memory_mib']} MiB (incl. reservations)"
    )
    if per_key:
        console.print("assignments per signing key id: " + ", ".join(f"{k} {n}" for k, n in per_key.items()))
    for key, why in sorted(quarantined.items()):
        console.print(f"[red]quarantined[/red] pod {key}: {why} (its claimed slices count as held)")
    for where, problem in sorted(state.problems.items()):
        if not where.startswith("pod/") or where[4:] not in quarantined:
            console.print(f"[yellow]problem[/yellow] {where}: {problem}")
    return 0


def explain_lines(state: Controller, namespace: str, name: str, *, what_if: bool = True) -> list[str]:
    """What `gpupool explain` prints (separate for tests): the live pod (gate, node, assignment), the decision
    the controller published on it (its `gpupool.io/Admission` condition), its queue, quota and the pool's
    fit now; then, for a gated pod and only with `what_if`, a fresh admission pass labelled as a what-if
    (it changes `state`)."""
    pod = next((p for p in state.pods.values() if objects.pod_key(p) == f"{namespace}/{name}"), None)
    if pod is None:
        problem = state.problems.get(f"pod/{namespace}/{name}")
        if problem:
            return [f"pod {namespace}/{name} is invalid: {problem}"]
        return [f"pod {namespace}/{name} is not a gpupool pod (no gpupool resources) or does not exist"]
    uid = objects.pod_uid(pod)
    entry = state.manager.pods.get(uid)
    lines = [f"pod {namespace}/{name} (uid {uid}, priority {entry.request.priority if entry else '?'})"]
    gated = objects.pod_gated(pod)
    node = objects.pod_node_name(pod)
    lines.append("admission gate: present (not admitted yet)" if gated else "admission gate: removed (admitted)")
    decision = objects.pod_admission_decision(pod)
    if decision is None:
        lines.append("controller decision: none published yet")
    else:
        since = f" since {timefmt.format_time(decision.since)}" if decision.since is not None else ""
        verdict = "admitted" if decision.admitted else "not admitted"
        lines.append(f"controller decision: {verdict} ({decision.reason}{since}): {decision.message}")
    lines.extend(resize.describe(pod))
    if entry is None:
        return [*lines, "not tracked by the queue manager"]
    if entry.assigned is not None:
        lines.append(f"bound to node {entry.assigned.node}:")
        for s in entry.assigned.slices:
            where = "remote" if s.node != entry.assigned.node else "local"
            lines.append(f"  container {s.container}: {s.compute}% / {s.memory_mib} MiB on {s.gpu} "
                         f"({s.node}, {where}, slot {s.slot})")  # fmt: skip
        return lines
    if node:
        lines.append(f"bound to node {node}; no assignment recorded")
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
    lines.extend(groups.describe(state.manager, uid))
    if not gated:
        if not node:
            lines.append("waiting for the gpupool scheduler to bind it")
        return lines
    lines.append(f"waiting: {position} of {waiting} in line")
    nominated = (pod.get("metadata") or {}).get("annotations", {}).get(resources.NOMINATED)
    if nominated:
        try:
            at, expires = objects.parse_nomination(nominated)
            lines.append(f"nominated node {at} (preemption) until {timefmt.format_time(expires)}")
        except GpupoolError as exc:
            lines.append(f"nomination unreadable: {exc}")
    if queue_name is not None:
        # what it asks (the admission cycle's first quota check), not its charge: a waiting pod is charged 0
        need = Resources(entry.request.compute_units, entry.request.memory_units(0))
        shortfall = state.manager.quota_problem(queue_name, need)
        if shortfall is not None:
            lines.append(f"quota: {message(shortfall)}")
    nodes = state.manager.eligible_nodes(entry)
    names = state.ledger.node_names() if nodes is None else nodes
    result = state.placer.filter(entry.request, names)
    lines.append(f"fits now on {len(result.passing)} of {len(names)} node(s)" +
                 (f": {', '.join(sorted(result.passing)[:10])}" if result.passing else ""))  # fmt: skip
    for node_name, reason in sorted({**result.failed, **result.unresolvable}.items()):
        lines.append(f"  {node_name}: {reason}")
    if what_if:
        cycle = state.manager.schedule()
        admitted = next((a for a in cycle.admitted if a.uid == uid), None)
        outcome = (
            f"would be admitted (capacity on node {admitted.node})" if admitted is not None
            else f"would wait: {cycle.waiting.get(uid, 'no decision')}"
        )  # fmt: skip
        lines.append(f"what-if (a simulated admission pass now, not the controller's decision): {outcome}")
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


def pod_groups(kube: Any, pods: Sequence[dict[str, Any]]) -> dict[str, groups.GroupSpec | None]:
    """Each gpupool pod's group as the controller resolves it (controller.workloads: annotations, else the owner,
    read once per owner); an owner it cannot read gives the group the controller's error (it waits), and a
    warning."""
    from controller import workloads
    from kubeio.client import ApiError

    owners = workloads.OwnerCache()
    out: dict[str, groups.GroupSpec | None] = {}
    for pod in pods:
        if not resources.mentions_gpupool(pod) or objects.pod_is_terminal(pod):
            continue
        found = workloads.owner_of(pod)
        read = None
        if isinstance(found, workloads.Ref):
            if owners.known(found) is None:
                try:
                    owners.put(found, kube.request("GET", found.path()), None, 0.0)
                except ApiError as exc:  # RBAC, gone: recorded as the controller records it
                    print(f"gpupool snapshot: warning: reading {found.kind} {found.namespace}/{found.name}: {exc}",
                          file=sys.stderr)  # fmt: skip
                    owners.put(found, None, str(exc)[:200], 0.0)
            read = owners.known(found)
        out[objects.pod_key(pod)] = workloads.resolved_group(pod, found, read)
    return out


def run_snapshot(args: argparse.Namespace) -> int:
    """List what the controller reads (kubeio, raw JSON) and write it in the snapshot format
    (`gpupool.simulator.snapshot`, docs/timeline.md); nothing is written to the cluster."""
    from gpupool.simulator.snapshot import capture
    from kubeio.client import ApiError, KubeClient
    from kubeio.paths import GPUNODES, GPUQUEUES, NAMESPACES, NODES, PODS

    try:
        kube = KubeClient.connect(args.kubeconfig, in_cluster=False if args.kubeconfig else None)
        namespaces, nodes, gpunodes, gpuqueues, pods = (
            kube.list(path)[0] for path in (NAMESPACES, NODES, GPUNODES, GPUQUEUES, PODS)
        )
    except ApiError as exc:
        print(f"gpupool snapshot: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # kubeconfig problems surface from the kubernetes package's loader
        print(f"gpupool snapshot: error: cannot reach the API server: {exc}", file=sys.stderr)
        return 1
    doc = capture(namespaces, nodes, gpunodes, gpuqueues, pods, taken=time.time(), pod_groups=pod_groups(kube, pods))
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    counts = ", ".join(f"{len(doc[k])} {k}" for k in ("gpuNodes", "gpuQueues", "pods"))
    print(f"gpupool snapshot: {counts}", file=sys.stderr)
    return 0


# --- resize (docs/runtime.md "Resize"): writes the request, then reads the outcome back ------------------------


def add_resize_parser(subparsers: Any) -> None:
    cmd = subparsers.add_parser("resize", help="grow or shrink a running pod's slices, live")
    cmd.add_argument("pod", metavar="NAMESPACE/POD")
    cmd.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    cmd.add_argument("--container", default=None, help="app container (default: the only one with gpupool slices)")
    cmd.add_argument("--compute", type=int, default=None, help="percent of one GPU per slice, 1..100")
    cmd.add_argument("--memory", type=int, default=None, metavar="MIB", help="MiB per slice")
    cmd.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                     help="wait this long for the outcome (0: write the request and return)")  # fmt: skip
    cmd.set_defaults(run=run_resize)


def run_resize(args: argparse.Namespace) -> int:
    """0: applied (or written, with --wait 0); 1: refused or not written; 2: bad arguments; 3: no outcome in time."""
    import time

    from kubeio.client import MERGE_PATCH, ApiError, KubeClient

    if "/" not in args.pod:
        print("write NAMESPACE/POD, e.g. team-a/bert-finetune")
        return 2
    namespace, name = args.pod.split("/", 1)
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    kube = KubeClient.connect(args.kubeconfig, in_cluster=False)
    try:
        pod = kube.request("GET", path)
        request = resize.next_request(pod, args.container, args.compute, args.memory)
        meta = pod.get("metadata") or {}
        # resourceVersion: the patch fails (409) rather than overwrite a request written meanwhile
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                              "annotations": {resize.REQUEST: request.to_annotation()}}}  # fmt: skip
        started = time.monotonic()
        kube.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
    except GpupoolError as exc:
        print(f"gpupool resize: {exc}")
        return 2
    except ApiError as exc:
        print(f"gpupool resize: the request was not written: {exc}")
        return 1
    print(f"resize #{request.seq} of {args.pod} written")
    deadline = started + args.wait
    while time.monotonic() < deadline:
        try:
            pod = kube.request("GET", path)
        except ApiError as exc:
            print(f"gpupool resize: reading the pod failed: {exc}")
            return 1
        outcome = resize.outcome_of(pod, request.seq)
        if outcome is not None and outcome.state in resize.FINAL:
            print(f"{outcome.state.value} after {time.monotonic() - started:.2f}s: {outcome.message}")
            return 0 if outcome.state is resize.State.APPLIED else 1
        time.sleep(0.1)
    if args.wait > 0:
        print(f"no outcome after {args.wait:.0f}s; `gpupool explain {args.pod}` shows where it waits")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
