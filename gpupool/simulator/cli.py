"""`gpupool simulate`: replay an openb trace with one or more policies and compare with the paper.

    gpupool simulate --policy fgd,fgdpp,bestfit --seeds 10 --jobs 2 --json out/openb.json --plot out/openb.png

Defaults: the trace files under `$GPUPOOL_OPENB_DIR` (else `../shared/data/openb` next to the
repository), seeds 42.., the default policy alone. Bad input (a missing or malformed file, an
unknown policy) prints one line and exits with status 2. A pod no idle node could ever serve is,
as in the published protocol, arrived and failed: a warning lists each with its row (`--strict`
refuses the trace instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from gpupool.policies import DEFAULT_POLICY, available
from gpupool.simulator.metrics import mean_sd
from gpupool.simulator.trace import (
    KINDS,
    Infeasible,
    TraceError,
    TraceNode,
    TracePod,
    infeasible_pods,
    load_nodes,
    load_pods,
)

EXIT_BAD_INPUT = 2

_CACHE: dict[tuple[str, str], tuple[list[TraceNode], list[TracePod], list[Infeasible]]] = {}


def _load(nodes_path: str, pods_path: str) -> tuple[list[TraceNode], list[TracePod], list[Infeasible]]:
    key = (nodes_path, pods_path)
    if key not in _CACHE:
        nodes = load_nodes(nodes_path)
        pods = load_pods(pods_path)
        _CACHE[key] = (nodes, pods, infeasible_pods(pods, nodes))
    return _CACHE[key]


_BOUNDS: dict[tuple[str, str, int, float], float] = {}


def seed_bound(nodes_path: str, pods_path: str, seed: int, tune: float) -> float:
    """The physical limit at 100 % arrived for one seed (`gpupool.simulator.bound`), remembered per process."""
    key = (nodes_path, pods_path, seed, tune)
    if key not in _BOUNDS:
        import random

        from gpupool.simulator.bound import allocation_bound, arrived_at
        from gpupool.simulator.protocol import shuffled_pods
        from gpupool.simulator.trace import total_gpu_milli

        nodes, pods, _ = _load(nodes_path, pods_path)
        capacity = total_gpu_milli(nodes)
        order = shuffled_pods(pods, random.Random(seed), capacity, tune)
        _BOUNDS[key] = allocation_bound(nodes, arrived_at(order, capacity))
    return _BOUNDS[key]


def run_one(
    nodes_path: str, pods_path: str, policy: str, seed: int, tune: float, coverage: float,
    progress: Callable[[int, int], None] | None = None, bound: bool = False,
) -> Any:  # fmt: skip
    """One run, in this process; returns a `RunSummary` (picklable, for process pools). `bound`: also the
    seed's physical limit (not counted in the run's seconds)."""
    from gpupool.simulator.protocol import replay
    from gpupool.simulator.report import RunSummary, trace_name
    from gpupool.simulator.trace import target_workload

    nodes, pods, _ = _load(nodes_path, pods_path)
    workload = target_workload(pods, coverage)
    result = replay(nodes, pods, policy, seed, trace=trace_name(pods_path), tune=tune, workload=workload,
                    progress=progress)  # fmt: skip
    summary = RunSummary.of(result, tune, sum(n.gpus for n in nodes))
    if bound:
        summary.bound_at_100 = seed_bound(nodes_path, pods_path, seed, tune)
    return summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from gpupool.simulator.report import default_data_dir

    data = default_data_dir()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay an openb trace through the placement engine and compare policies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pods", type=Path, default=data / "openb_pod_list_default.csv", help="pod list CSV")
    parser.add_argument("--nodes", type=Path, default=data / "openb_node_list_gpu_node.csv", help="node list CSV")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"comma-separated policies (default {DEFAULT_POLICY}); of {', '.join(available())}")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10, like the paper)")
    parser.add_argument("--seed-base", type=int, default=42, help="first seed (default 42)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--tune", type=float, default=1.3, help="inflate the trace to this × GPU capacity")
    parser.add_argument("--coverage", type=float, default=0.95, help="target workload coverage (default 0.95)")
    parser.add_argument("--expected", type=Path, default=None,
                        help="the authors' results directory (default: expected/ next to --nodes)")
    parser.add_argument("--json", type=Path, default=None, help="write per-policy statistics here")
    parser.add_argument("--plot", type=Path, default=None, help="write the allocation curve PNG here")
    parser.add_argument("--csv", type=Path, default=None, help="write per-run rows (expected/ format) to this dir")
    parser.add_argument("--no-bound", dest="bound", action="store_false",
                        help="skip the physical limit (an LP per seed; docs/openb.md)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a trace with a pod no idle node could serve (default: it arrives and fails)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")  # fmt: skip
    what_if = parser.add_argument_group("what-if over time (--timeline; docs/timeline.md)")
    what_if.add_argument("--timeline", action="store_true",
                         help="replay arrivals and departures through the controller's queues instead")
    what_if.add_argument("--queues", type=Path, default=None,
                         help="YAML: the queues of a trace run and how its pods map to them (default: no queue)")
    what_if.add_argument("--snapshot", type=Path, default=None,
                         help="a cluster written by `gpupool snapshot` instead of the trace")
    what_if.add_argument("--set-quota", action="append", default=[], metavar="QUEUE=COMPUTE",
                         help="override a queue's nominalQuota.compute (100 = one GPU); repeatable")
    what_if.add_argument("--speedup", type=float, default=1.0,
                         help="trace: divide the time between arrivals by this (run times stay; default 1)")
    what_if.add_argument("--duration", type=float, default=3600.0,
                         help="snapshot: seconds a pod runs once admitted (default 3600)")
    what_if.add_argument("--arrivals", type=int, default=0,
                         help="snapshot: this many more pods, copies of the snapshot's pods (default 0)")
    what_if.add_argument("--interarrival", type=float, default=60.0,
                         help="snapshot: mean seconds between those arrivals (exponential; default 60)")
    what_if.add_argument("--step", type=float, default=None,
                         help="seconds between samples of the series (default: 200 samples)")
    what_if.add_argument("--horizon", type=float, default=None, help="stop this many seconds after the start")
    what_if.add_argument("--no-preemption", dest="preemption", action="store_false",
                         help="blocked queue heads never preempt")
    what_if.add_argument("--preemption-retry", type=float, default=60.0,
                         help="seconds before a head whose victim search failed searches again (0: every pass)")
    parser.set_defaults(run=run)
    return parser


def _fail(message: str) -> int:
    print(f"gpupool simulate: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    if args.timeline:
        return _timeline(args)
    if args.snapshot is not None or args.queues is not None or args.set_quota:
        return _fail("--snapshot, --queues and --set-quota go with --timeline")
    policies = [p.strip() for p in str(args.policy).split(",") if p.strip()]
    if not policies:
        return _fail("--policy: name at least one policy")
    unknown = [p for p in policies if p not in available()]
    if unknown:
        return _fail(f"--policy: unknown policy {unknown[0]!r}; choose from {', '.join(available())}")
    if len(set(policies)) != len(policies):
        return _fail("--policy: a policy is named twice")
    if args.seeds < 1:
        return _fail(f"--seeds: {args.seeds} (need at least 1)")
    if args.jobs < 1:
        return _fail(f"--jobs: {args.jobs} (need at least 1)")
    if not 0 <= args.tune <= 10:
        return _fail(f"--tune: {args.tune} (need 0..10)")
    if not 0 < args.coverage <= 1:
        return _fail(f"--coverage: {args.coverage} (need a share in (0, 1])")
    try:
        nodes, _, infeasible = _load(str(args.nodes), str(args.pods))
    except TraceError as exc:
        return _fail(str(exc))
    if not any(n.gpus for n in nodes):
        return _fail(f"{args.nodes}: no node has a GPU")
    if infeasible and args.strict:
        return _fail(infeasible[0].describe(args.pods))
    if infeasible:
        print(f"gpupool simulate: warning: {len(infeasible)} pod(s) no node could ever serve arrive and fail "
              "(the published protocol; --strict refuses the trace):", file=sys.stderr)  # fmt: skip
        for bad in infeasible:
            print(f"  {bad.describe(args.pods)}", file=sys.stderr)
    return _simulate(args, policies, infeasible)


def _simulate(args: argparse.Namespace, policies: list[str], infeasible: list[Infeasible]) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from gpupool.simulator.report import RunSummary, add_recovered, load_reference, summarise, trace_name, write_csv

    console = Console(stderr=True)
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    specs = [(p, s) for p in policies for s in seeds]
    runs: dict[str, list[RunSummary]] = {p: [] for p in policies}
    common = (str(args.nodes), str(args.pods))
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task(f"simulate {trace_name(args.pods)}", total=len(specs))
        if args.jobs == 1:
            for k, (policy, seed) in enumerate(specs):
                progress.update(task, description=f"{policy} seed {seed}")

                def tick(i: int, n: int, k: int = k) -> None:
                    progress.update(task, completed=k + i / n)

                summary = run_one(*common, policy, seed, args.tune, args.coverage, tick, args.bound)
                runs[policy].append(summary)
                progress.update(task, completed=k + 1)
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = {
                    pool.submit(run_one, *common, policy, seed, args.tune, args.coverage, None, args.bound): policy
                    for policy, seed in specs
                }
                for future in as_completed(futures):
                    summary = future.result()
                    runs[futures[future]].append(summary)
                    progress.update(task, advance=1, description=f"{summary.policy} seed {summary.seed} done")
    for policy in policies:
        runs[policy].sort(key=lambda r: r.seed)

    expected = args.expected if args.expected is not None else Path(args.nodes).parent / "expected"
    trace = trace_name(args.pods)
    stats: dict[str, dict[str, Any]] = {}
    for policy in policies:
        stats[policy] = summarise(runs[policy], load_reference(expected, trace, policy))
        stats[policy]["infeasible_pods"] = [bad.as_json() for bad in infeasible]
    add_recovered(stats, load_reference(expected, trace, "bestfit"))
    _print_table(trace, policies, stats, runs, len(seeds))

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.plot is not None:
        from gpupool.simulator.plot import plot_allocation

        curves = {p: stats[p]["curve_alloc_mean"] for p in policies}
        plot_allocation(curves, args.plot, f"{trace}: allocation ratio, mean of {len(seeds)} seed(s)")
        console.print(f"wrote {args.plot}")
    if args.csv is not None:
        for path in write_csv(args.csv, [r for p in policies for r in runs[p]]):
            console.print(f"wrote {path}")
    return 0


def _print_table(trace: str, policies: list[str], stats: dict[str, dict[str, Any]],
                 runs: dict[str, list[Any]], n_seeds: int) -> None:  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    from gpupool.simulator.report import fmt

    table = Table(title=f"openb {trace}: {n_seeds} seed(s), GPU memory unconstrained (1 MiB per 1 % compute)")
    for col in ("policy", "alloc @100 %", "paper", "alloc @130 %", "paper", "frag rate @80 %", "paper",
                "bound @100 %", "recovered", "paper", "failed cpu/share/whole/multi", "s/run"):  # fmt: skip
        table.add_column(col, justify="left" if col == "policy" else "right")
    for policy in policies:
        s = stats[policy]
        paper = s.get("paper", {})

        def ref(name: str, paper: dict[str, float] = paper) -> str:
            return fmt(paper[name], paper[f"{name}_sd"]) if name in paper else "—"

        failed = "/".join(f"{s['failed_per_run'][k]:g}" for k in KINDS)
        table.add_row(
            policy,
            fmt(s["alloc_at_100"], s["alloc_at_100_sd"]), ref("alloc_at_100"),
            fmt(s["alloc_at_130"], s["alloc_at_130_sd"]), ref("alloc_at_130"),
            fmt(s["frag_rate_at_80"], s["frag_rate_at_80_sd"]), ref("frag_rate_at_80"),
            fmt(s.get("bound_at_100", math.nan)), share(s.get("recovered")), share(paper.get("recovered")),
            failed, f"{s['seconds_per_run']:.1f}",
        )  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    for policy in policies:
        mean, sd = mean_sd([r.alloc[100] for r in runs[policy]])
        bound = stats[policy].get("bound_at_100")
        limit = "" if bound is None else f", bound {bound:.2f}, recovered {share(stats[policy].get('recovered'))}"
        seconds = f"{stats[policy]['seconds_per_run']:.1f} s/run ({stats[policy]['cpu_seconds_per_run']:.1f} CPU s)"
        print(f"{trace} {policy}: alloc_at_100 {mean:.2f} ± {sd:.2f} ({n_seeds} seeds){limit}, {seconds}")


def share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def _timeline(args: argparse.Namespace) -> int:
    """`--timeline`: build the scenario (trace or snapshot), run it, print the table, write JSON and PNG."""
    import yaml

    from gpupool.pool import PoolConfig, PoolConfigError
    from gpupool.simulator import snapshot as snapshot_format
    from gpupool.simulator import timeline
    from gpupool.simulator.trace import load_times

    policy = str(args.policy).strip()
    if policy not in available():
        return _fail(f"--policy: {policy!r}; --timeline takes one policy of {', '.join(available())}")
    for flag, value in (("--step", args.step), ("--horizon", args.horizon)):
        if value is not None and not value > 0:
            return _fail(f"{flag}: {value} (need seconds > 0)")
    try:
        quotas = timeline.parse_quota_overrides(args.set_quota)
        common: dict[str, Any] = {"quotas": quotas, "step": args.step, "horizon": args.horizon,
                                  "preemption": args.preemption, "preemption_retry": args.preemption_retry}  # fmt: skip
        if args.snapshot is not None:
            if args.queues is not None:
                return _fail("--queues: a snapshot has its own GPUQueues (change them with --set-quota)")
            try:
                doc = json.loads(Path(args.snapshot).read_text())
            except (OSError, ValueError) as exc:
                return _fail(f"{args.snapshot}: cannot read a snapshot ({exc})")
            snap = snapshot_format.parse(doc)
            for what, why in sorted(snap.problems.items()):
                print(f"gpupool simulate: warning: {args.snapshot}: {what} left out: {why}", file=sys.stderr)
            config = PoolConfig(default_policy=policy, seed=args.seed_base)
            scenario = timeline.scenario_from_snapshot(
                snap, config=config, seed=args.seed_base, duration=args.duration, arrivals=args.arrivals,
                interarrival=args.interarrival, **common,
            )  # fmt: skip
            source = f"snapshot {args.snapshot}"
        else:
            plan = None
            if args.queues is not None:
                try:
                    plan = timeline.parse_queue_plan(yaml.safe_load(Path(args.queues).read_text()))
                except (OSError, yaml.YAMLError) as exc:
                    return _fail(f"{args.queues}: cannot read ({exc})")
            nodes, pods, _ = _load(str(args.nodes), str(args.pods))
            times = load_times(args.pods)
            scenario = timeline.scenario_from_trace(nodes, pods, times, plan, policy=policy, seed=args.seed_base,
                                                    speedup=args.speedup, **common)  # fmt: skip
            source = f"trace {Path(args.pods).name}" + (f" ×{args.speedup:g}" if args.speedup != 1 else "")
    except (timeline.TimelineError, snapshot_format.SnapshotError, TraceError, PoolConfigError) as exc:
        where = f"{args.snapshot}: " if isinstance(exc, snapshot_format.SnapshotError) else ""
        where = f"{args.queues}: " if args.queues is not None and isinstance(exc, timeline.TimelineError) \
            and not str(exc).startswith("--") else where
        return _fail(f"{where}{exc}")
    result = timeline.run(scenario)
    _print_timeline(source, policy, result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_json(), indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        from gpupool.simulator.plot import plot_timeline

        plot_timeline(result.times, {"GPU allocation": result.utilisation, "fragmentation (FGD)": result.fragmentation},
                      result.pending, args.plot, f"{source}, {policy}: {result.preemptions} preemption(s)")  # fmt: skip
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def duration_text(seconds: float) -> str:
    """Seconds as people read them: 42 s, 3.5 min, 2.1 h, 1.5 d."""
    if math.isnan(seconds):
        return "—"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _print_timeline(source: str, policy: str, result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{source}, {policy}: waits from arrival to admission, per queue")
    for col in ("queue", "admitted", "still waiting", "wait p50", "p90", "p99", "max", "preempted"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for queue in result.queues():
        table.add_row(
            queue, str(len(result.waits.get(queue, []))), str(len(result.unfinished.get(queue, []))),
            *(duration_text(result.wait_percentile(queue, q)) for q in (50, 90, 99, 100)),
            str(result.preemptions_by_queue.get(queue, 0)),
        )  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    util, frag = result.utilisation, result.fragmentation
    mean = sum(util) / len(util) if util else 0.0
    span = duration_text(result.end - result.start)
    print(f"GPU allocation: mean {mean:.2f} %, peak {max(util, default=0.0):.2f} % over {span}"
          f" ({len(util)} samples every {duration_text(result.step)}); fragmentation mean "
          f"{sum(frag) / len(frag) if frag else 0.0:.2f} %, peak {max(frag, default=0.0):.2f} %")  # fmt: skip
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
    print(f"admitted {result.admitted}, completed {result.completed}, preemptions {result.preemptions}, "
          f"{result.cycles} admission passes, {result.seconds:.1f} s" + (f"; left out: {skipped}" if skipped else ""))
