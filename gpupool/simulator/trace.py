"""openb trace files: nodes and pods CSV (docs/openb-benchmark.md §2), validated row by row.

Every problem raises `TraceError` naming the file, the line (header = line 1) and the
field, so the command line can print one clear line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpupool.fragmentation import DEFAULT_COVERAGE, MILLI_PER_UNIT, Workload, shape_key
from gpupool.request import WHOLE_GPU_COMPUTE

#: milli-GPU of one whole GPU in the trace
MILLI = 1000

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
#: optional pod columns (multigpu40 is published without `gpu_spec`: every pod then takes any model;
#: `gpu_memory_mib`, GPU memory per GPU, only in memory-annotated variants, `bench/openb_variants.py --memory`)
OPTIONAL_POD_COLUMNS = ("gpu_spec", "gpu_memory_mib")
#: optional node column: each GPU's memory (MiB); absent, the replay's GPUs have memory ∝ compute
OPTIONAL_NODE_COLUMNS = ("gpu_memory_mib",)


class TraceError(Exception):
    """A trace file is missing, malformed, or asks for something impossible."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{message}")


@dataclass(frozen=True, slots=True)
class TraceNode:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str
    gpu_memory_mib: int = 0  # per GPU; 0 = not in the trace


@dataclass(frozen=True, slots=True)
class TracePod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU, 0..1000
    models: frozenset[str]
    line: int = 0
    gpu_memory_mib: int = 0  # per GPU of a sharing pod; 0 = not in the trace (whole GPUs take all of theirs)

    @property
    def compute(self) -> int:
        """Per-GPU compute in gpupool units (gpu_milli / 10)."""
        return self.gpu_milli // MILLI_PER_UNIT

    @property
    def gpu_request_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def kind(self) -> str:
        """cpu-only, sharing, whole (one GPU) or multi (2+ GPUs)."""
        if self.num_gpu == 0:
            return "cpu-only"
        if self.num_gpu == 1:
            return "sharing" if self.gpu_milli < MILLI else "whole"
        return "multi"

    def renamed(self, name: str) -> TracePod:
        return TracePod(name, self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.models, self.line,
                        self.gpu_memory_mib)  # fmt: skip


KINDS = ("cpu-only", "sharing", "whole", "multi")


def _rows(path: Path, required: Iterable[str]) -> Iterable[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise TraceError(path, None, None, "no such file")
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(path, None, None, f"cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(path, 1, None, f"not a CSV file ({exc})") from None
        if not header:
            raise TraceError(path, 1, None, "empty file (no header row)")
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(path, 1, missing[0], f"missing column (the header needs {', '.join(required)})")
        try:
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    raise TraceError(path, line, None, f"expected {len(header)} values, got a different number")
                yield line, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(path, reader.line_num, None, f"malformed CSV ({exc})") from None


def _int(path: Path, line: int, row: dict[str, str], field: str, low: int = 0, high: int | None = None) -> int:
    text = row[field].strip()
    try:
        value = int(text)
    except ValueError:
        raise TraceError(path, line, field, f"{text!r} is not a whole number") from None
    if value < low:
        raise TraceError(path, line, field, f"{value} is below {low}")
    if high is not None and value > high:
        raise TraceError(path, line, field, f"{value} is above {high}")
    return value


def load_nodes(path: Path | str) -> list[TraceNode]:
    """GPU nodes of a node list; CPU-only rows (gpu = 0) are kept (they can serve CPU-only pods)."""
    path = Path(path)
    nodes: list[TraceNode] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_COLUMNS):
        name = row["sn"].strip()
        if not name:
            raise TraceError(path, line, "sn", "empty node name")
        if name in seen:
            raise TraceError(path, line, "sn", f"duplicate node {name!r}")
        seen.add(name)
        cpu = _int(path, line, row, "cpu_milli", 1)
        memory = _int(path, line, row, "memory_mib", 0)
        gpus = _int(path, line, row, "gpu", 0, 64)
        model = row["model"].strip()
        if gpus and not model:
            raise TraceError(path, line, "model", "a node with GPUs needs a GPU model")
        gpu_memory = _int(path, line, row, "gpu_memory_mib", 0) if row.get("gpu_memory_mib") else 0
        nodes.append(TraceNode(name, cpu, memory, gpus, model, gpu_memory))
    if not nodes:
        raise TraceError(path, None, None, "no nodes in the file")
    return nodes


def load_pods(path: Path | str, nodes: list[TraceNode] | None = None) -> list[TracePod]:
    """Pods of a pod list. With `nodes`, a pod that no idle node could ever serve is an error (`--strict`);
    without, such pods load and the replay counts them arrived and failed (`infeasible_pods` lists them)."""
    path = Path(path)
    pods: list[TracePod] = []
    seen: set[str] = set()
    for line, row in _rows(path, POD_COLUMNS):
        name = row["name"].strip()
        if not name:
            raise TraceError(path, line, "name", "empty pod name")
        if name in seen:
            raise TraceError(path, line, "name", f"duplicate pod {name!r}")
        seen.add(name)
        cpu = _int(path, line, row, "cpu_milli", 0)
        memory = _int(path, line, row, "memory_mib", 0)
        num_gpu = _int(path, line, row, "num_gpu", 0)
        gpu_milli = _int(path, line, row, "gpu_milli", 0, MILLI)
        if num_gpu == 0 and gpu_milli != 0:
            raise TraceError(path, line, "gpu_milli", f"{gpu_milli} with num_gpu 0 (a CPU-only pod has gpu_milli 0)")
        if num_gpu > 0 and gpu_milli == 0:
            raise TraceError(path, line, "gpu_milli", f"0 with num_gpu {num_gpu} (a GPU pod needs gpu_milli > 0)")
        if num_gpu > 1 and gpu_milli != MILLI:
            raise TraceError(path, line, "gpu_milli", f"{gpu_milli} with num_gpu {num_gpu} (multi-GPU pods use 1000)")
        if gpu_milli % MILLI_PER_UNIT:
            raise TraceError(path, line, "gpu_milli", f"{gpu_milli} is not a multiple of {MILLI_PER_UNIT}")
        models = frozenset(m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip())
        gpu_memory = _int(path, line, row, "gpu_memory_mib", 0) if row.get("gpu_memory_mib") else 0
        if gpu_memory and num_gpu != 1:
            raise TraceError(path, line, "gpu_memory_mib", f"{gpu_memory} with num_gpu {num_gpu} (only sharing pods)")
        pods.append(TracePod(name, cpu, memory, num_gpu, gpu_milli, models, line, gpu_memory))
    if not pods:
        raise TraceError(path, None, None, "no pods in the file")
    if nodes is not None:
        check_servable(path, pods, nodes)
    return pods


@dataclass(frozen=True, slots=True)
class Infeasible:
    """A pod that even an idle cluster could not serve: it can only ever fail. `field` names the culprit."""

    pod: TracePod
    field: str
    reason: str

    def error(self, path: Path | str) -> TraceError:
        message = f"no node could ever serve pod {self.pod.name}: {self.reason}"
        return TraceError(path, self.pod.line, self.field, message)

    def describe(self, path: Path | str) -> str:
        return str(self.error(path))

    def as_json(self) -> dict[str, object]:
        return {"pod": self.pod.name, "line": self.pod.line, "field": self.field, "reason": self.reason}


def infeasible_pods(pods: list[TracePod], nodes: list[TraceNode]) -> list[Infeasible]:
    """The pods no idle node could serve (CPU, host memory, GPU count or model), in file order."""
    max_cpu = max(n.cpu_milli for n in nodes)
    max_mem = max(n.memory_mib for n in nodes)
    servable: dict[tuple[int, int, int, frozenset[str]], bool] = {}
    out: list[Infeasible] = []
    for pod in pods:
        key = (pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.models)
        ok = servable.get(key)
        if ok is None:
            ok = servable[key] = any(_fits_idle(pod, n) for n in nodes)
        if ok:
            continue
        if pod.cpu_milli > max_cpu:
            field, why = "cpu_milli", f"{pod.cpu_milli} is more than any node has ({max_cpu})"
        elif pod.memory_mib > max_mem:
            field, why = "memory_mib", f"{pod.memory_mib} is more than any node has ({max_mem})"
        elif pod.models and not any(n.model in pod.models for n in nodes):
            field, why = "gpu_spec", f"no node has a GPU of model {'|'.join(sorted(pod.models))}"
        elif pod.num_gpu > 0 and not any(n.gpus >= pod.num_gpu for n in nodes):
            field, why = "num_gpu", f"{pod.num_gpu} is more GPUs than any node has ({max(n.gpus for n in nodes)})"
        else:
            field, why = _short_of(pod, nodes)
        out.append(Infeasible(pod, field, why))
    return out


def _short_of(pod: TracePod, nodes: list[TraceNode]) -> tuple[str, str]:
    """What the nodes that have the pod's GPUs (count and model) lack for it: CPU or host memory."""
    gpu_ok = [n for n in nodes if pod.num_gpu == 0 or _gpus_fit(pod, n)]
    if not gpu_ok:
        return "num_gpu", f"no node has {pod.num_gpu} GPUs of model {'|'.join(sorted(pod.models))}"
    which = f"a node with {pod.num_gpu} GPUs" + (f" of model {'|'.join(sorted(pod.models))}" if pod.models else "")
    cpu = max(n.cpu_milli for n in gpu_ok)
    if pod.cpu_milli > cpu:
        return "cpu_milli", f"{pod.cpu_milli} is more than {which} has ({cpu})"
    memory = max(n.memory_mib for n in gpu_ok if n.cpu_milli >= pod.cpu_milli)
    return "memory_mib", f"{pod.memory_mib} is more than {which} and enough CPU has ({memory})"


def check_servable(path: Path | str, pods: list[TracePod], nodes: list[TraceNode]) -> None:
    """Raise for the first pod that even an idle cluster could not serve (`--strict`)."""
    bad = infeasible_pods(pods, nodes)
    if bad:
        raise bad[0].error(path)


def _fits_idle(pod: TracePod, node: TraceNode) -> bool:
    if pod.cpu_milli > node.cpu_milli or pod.memory_mib > node.memory_mib:
        return False
    return pod.num_gpu == 0 or _gpus_fit(pod, node)


def _gpus_fit(pod: TracePod, node: TraceNode) -> bool:
    return node.gpus >= pod.num_gpu and (not pod.models or node.model in pod.models)


def target_workload(pods: Iterable[TracePod], coverage: float = 0.95) -> Workload:
    """M of §6.1 from the original pods (before any inflation), with their host memory per compute unit."""
    pods = list(pods)
    units = sum(p.num_gpu * p.compute for p in pods)
    memory = sum(p.memory_mib for p in pods if p.num_gpu) / units if units else 0.0
    keys = (shape_key(p.cpu_milli, p.gpu_milli, p.num_gpu, p.models) for p in pods)
    return Workload.from_shapes(keys, coverage, memory_per_unit=memory)


WORKLOAD_COLUMNS = ("cpu_milli", "num_gpu", "gpu_milli")


def load_workload(path: Path | str, coverage: float = DEFAULT_COVERAGE) -> Workload:
    """A target workload M from an openb-style pod CSV (columns cpu_milli, num_gpu, gpu_milli; optional gpu_spec
    and memory_mib, as in the trace): every row one task, the shapes covering `coverage` of them.

    The one reader of `fragmentation_workload` (the extender's and the controller's setting).
    """
    path = Path(path)
    keys = []
    units = memory = 0
    for line, row in _rows(path, WORKLOAD_COLUMNS):
        num_gpu, gpu_milli = _int(path, line, row, "num_gpu"), _int(path, line, row, "gpu_milli", 0, MILLI)
        models = (m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip())
        keys.append(shape_key(_int(path, line, row, "cpu_milli"), gpu_milli, num_gpu, models))
        if num_gpu and row.get("memory_mib") is not None:
            units += num_gpu * (gpu_milli // MILLI_PER_UNIT)
            memory += _int(path, line, row, "memory_mib")
    if not keys:
        raise TraceError(path, None, None, "no tasks in the file")
    return Workload.from_shapes(keys, coverage, memory_per_unit=memory / units if units else 0.0)


def total_gpu_milli(nodes: Iterable[TraceNode]) -> int:
    return sum(n.gpus for n in nodes) * MILLI


assert WHOLE_GPU_COMPUTE * MILLI_PER_UNIT == MILLI


#: the columns `gpupool simulate --timeline` needs (docs/timeline.md); `scheduled_time` and `qos` are optional
TIME_COLUMNS = ("name", "creation_time", "deletion_time")


@dataclass(frozen=True, slots=True)
class TraceTimes:
    """When a trace pod arrived, started (None: never scheduled in the trace) and left, in seconds; its QoS class."""

    created: int
    scheduled: int | None
    deleted: int
    qos: str

    @property
    def duration(self) -> int:
        """How long it ran in the trace: deletion minus scheduling (minus creation when it never started)."""
        start = self.created if self.scheduled is None else self.scheduled
        return max(0, self.deleted - start)


def load_times(path: Path | str) -> dict[str, TraceTimes]:
    """Pod name -> its times, from a pod list's `creation_time`, `deletion_time` (and `scheduled_time`, `qos`)."""
    path = Path(path)
    out: dict[str, TraceTimes] = {}
    for line, row in _rows(path, TIME_COLUMNS):
        name = row["name"].strip()
        created = _int(path, line, row, "creation_time", 0)
        deleted = _int(path, line, row, "deletion_time", created)
        scheduled = None
        if (row.get("scheduled_time") or "").strip():
            scheduled = _int(path, line, row, "scheduled_time", created, deleted)
        out[name] = TraceTimes(created, scheduled, deleted, (row.get("qos") or "").strip())
    return out
