"""Scheduling throughput and burst latency of the real kube-scheduler with the gpupool extender (issue 16).

    python bench/e2e_throughput.py --nodes 100 --pods 200 --json OUT.json

One local control plane (e2e.cluster) with N kwok nodes of 8 fake GPUs each, which also advertise
``example.com/gpu: 8``; the gpupool stack (e2e.stack) on it, the controller at the product's admission interval.
In the same run, the same ``gpupool-scheduler`` process binds:

* **scheduler path** (namespaces the admission webhooks skip): M pods are created with a bench-owned scheduling
  gate (``bench.gpupool.io/hold``, not gpupool's admission gate), so all of them exist before any is schedulable;
  then every gate is removed at once (32 threads) and the time runs from the first removal to the last pod bound.
  First M ``example.com/gpu: 1`` pods (**plain**: the extender is not called), deleted once bound (so that both
  phases start on the same cluster; ``--keep-plain-pods`` leaves them), then M pods asking
  ``gpupool.io/gpu: 1, gpu-compute: 50, gpu-memory: 4096`` (**gpupool**: filter, prioritize and bind go through
  the extender). ``ratio`` = gpupool pods/s / plain pods/s.
* ``--floor``: a third phase between plain and gpupool, in the same run: M pods asking
  ``floor.example.com/gpu: 1`` of a second kube-scheduler (``floor-scheduler``: the chart's configuration with
  bench/floor_extender as its extender; Go, built at start: filter answers one candidate, bind posts the Binding;
  no ledger, no watch). The same kube-scheduler round trips and outside Binding at almost no cost of their own:
  ``floor_ratio`` (floor / plain) is the most any extender reaches on the machine, ``gpupool_vs_floor`` what
  gpupool keeps of it. gpupool's extender and controller see those pods as not theirs; the idle second
  scheduler's informers cost every phase alike.
* **full path**: a burst of M ordinary gpupool pods (no schedulerName, no gate) created by 16 threads in a
  namespace served by a GPUQueue with room: mutating + validating webhook, the controller's queue admission and
  gate removal, then the scheduler and the extender. Per-pod latency = the bench's own clock from just before the
  create request to the moment its watch sees ``spec.nodeName`` (the API's timestamps have 1 s resolution; they
  are reported as a cross-check in ``details``). p50 and p99; ``details.full_path.admitted_*`` is the part up to
  the moment the watch sees the pod without any scheduling gate (webhook + queue admission).
* API server requests: ``apiserver_request_total`` (by verb and resource), webhook calls and watch events sent,
  from the API server's /metrics before and after each window, per pod (``requests_per_pod`` in each phase's
  ``details``: ``create``, ``release`` to the last bound, ``settle`` = the next 10 s). ``api_writes_per_pod``,
  ``watch_events_per_pod`` (pods, Events, GPUNodes, GPUQueues: Leases and Node heartbeats grow with the time, not
  the pods) and ``webhook_calls_per_pod``, over release + settle, with the GPUNode part apart
  (``gpunode_status_writes_per_pod``, ``gpunode_watch_events_per_pod``): counts, not times, what each kind of pod costs
  the API server whatever the machine's load (a phase slow enough for kwok's Node heartbeats to lapse still adds
  kube-controller-manager's pod status writes).
* ``counts`` in each phase's ``details``: watchers the API server closed on a slow reader, and with ``--audit-nodes``
  (kube-apiserver's audit log of Node requests) who asked what of Nodes, per window. ``scheduler_client``: the
  gpupool-scheduler's client QPS/burst (the chart's ``scheduler.clientConnection``; ``--scheduler-qps``/``-burst``):
  the plain pods' binds go through that client, so it caps the plain rate.
* CPU: utime+stime from ``/proc/<pid>/stat`` of the extender and the controller (and, in ``details``, the
  gpupool-scheduler and kube-apiserver) before and after each phase, divided by the pods bound in it. The top-level
  ``extender_cpu_ms_per_pod`` / ``controller_cpu_ms_per_pod`` are those of the full path (both components work
  there); the scheduler path's are in ``details``.

Times are wall clock on whatever machine runs it: a benchmark, not a test. Results and the machine: docs/e2e.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e.cluster import AUDIT_NODES, Cluster, FakeNode  # noqa: E402
from e2e.processes import free_port  # noqa: E402
from e2e.stack import CONTROLLER, EXTENDER, SCHEDULER, Stack  # noqa: E402

PLAIN = "example.com/gpu"
FLOOR = "floor.example.com/gpu"  # what --floor's pods ask: their scheduler sends them to the floor extender
FLOOR_SCHEDULER = "floor-scheduler"
FLOOR_SOURCE = ROOT / "bench" / "floor_extender"
HOLD_GATE = "bench.gpupool.io/hold"  # the bench's own gate: gpupool's admission gate is the controller's
WEBHOOK_SKIP = ("gpupool.io/webhook", "ignore")
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ raw API access


class Api:
    """Minimal JSON client on keep-alive HTTPS connections (one per thread): the bench's own cost stays small and
    the same for every kind of pod (the kubernetes client validates every body with pydantic)."""

    def __init__(self, c: Cluster) -> None:
        u = urllib.parse.urlsplit(c.api_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 443
        self.ctx = c._ssl_for(c.api_url)
        self.local = threading.local()

    def conn(self) -> http.client.HTTPSConnection:
        cn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if cn is None:
            cn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            self.local.conn = cn
        return cn

    def request(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        payload = self.raw(method, path, body, ctype, "application/json")
        return json.loads(payload) if payload else None

    def text(self, path: str) -> str:
        """A plain-text GET (the API server's /metrics)."""
        return self.raw("GET", path, None, "application/json", "text/plain").decode()

    def raw(self, method: str, path: str, body: Any, ctype: str, accept: str) -> bytes:
        """The answer's bytes; a connection the server closed (idle keep-alive) is opened again, twice at most."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": ctype, "Accept": accept}
        for attempt in range(3):
            cn = self.conn()
            try:
                cn.request(method, path, body=data, headers=headers)
                r = cn.getresponse()
                payload = r.read()
            except (OSError, http.client.HTTPException):
                cn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {r.status}: {payload[:500]!r}")
            return payload
        raise AssertionError("unreachable")

    def stream(self, path: str) -> Iterable[dict[str, Any]]:
        """The events of a watch request, one JSON object per line."""
        cn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=900)
        try:
            cn.request("GET", path, headers={"Accept": "application/json"})
            r = cn.getresponse()
            if r.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {r.status}: {r.read()[:500]!r}")
            while line := r.readline():
                yield json.loads(line)
        finally:
            cn.close()


class BindWatch(threading.Thread):
    """Watches the pods of one namespace and records, on the monotonic clock, when each is first seen bound."""

    def __init__(self, api: Api, ns: str) -> None:
        super().__init__(daemon=True, name=f"watch-{ns}")
        self.api, self.ns = api, ns
        self.bound: dict[str, float] = {}
        self.ungated: dict[str, float] = {}  # first seen without any scheduling gate
        self.cond = threading.Condition()
        self.rv = str(api.request("GET", f"/api/v1/namespaces/{ns}/pods?limit=1")["metadata"]["resourceVersion"])
        self.stop = False
        self.start()

    def run(self) -> None:
        while not self.stop:
            q = f"watch=1&resourceVersion={self.rv}&timeoutSeconds=600&allowWatchBookmarks=true"
            try:
                for ev in self.api.stream(f"/api/v1/namespaces/{self.ns}/pods?{q}"):
                    now = time.monotonic()
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        raise RuntimeError(f"watch {self.ns}: {obj}")
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    name = obj.get("metadata", {}).get("name")
                    spec = obj.get("spec") or {}
                    if name and not spec.get("schedulingGates"):
                        self.ungated.setdefault(name, now)
                    if name and spec.get("nodeName") and name not in self.bound:
                        with self.cond:
                            self.bound[name] = now
                            self.cond.notify_all()
                    if self.stop:
                        return
            except (OSError, http.client.HTTPException):
                time.sleep(0.2)  # reconnect from the last resourceVersion

    def wait(self, names: Iterable[str], timeout: float) -> dict[str, float]:
        want = set(names)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not want <= self.bound.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"{self.ns}: only {len(want & self.bound.keys())}/{len(want)} pods bound "
                                     f"after {timeout:.0f} s")  # fmt: skip
                self.cond.wait(min(left, 1.0))
            return {n: self.bound[n] for n in want}


# ------------------------------------------------------------------------------------------------ cluster objects


def node_body(n: FakeNode) -> dict[str, Any]:
    body = n.manifest()
    for k in ("capacity", "allocatable"):
        body["status"][k][PLAIN] = str(n.gpus)
    return body


def pod_body(name: str, kind: str, *, hold: bool, scheduler: bool) -> dict[str, Any]:
    if kind == "plain":
        limits = {PLAIN: "1"}
    elif kind == "floor":
        limits = {FLOOR: "1"}
    else:
        limits = {"gpupool.io/gpu": "1", "gpupool.io/gpu-compute": "50", "gpupool.io/gpu-memory": "4096"}
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": limits}}],
    }
    if scheduler:  # the webhook sets it for ordinary pods; skipped namespaces name the scheduler themselves
        spec["schedulerName"] = FLOOR_SCHEDULER if kind == "floor" else "gpupool-scheduler"
    if hold:
        spec["schedulingGates"] = [{"name": HOLD_GATE}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": kind}}, "spec": spec}


def namespace(api: Api, c: Cluster, name: str, labels: Mapping[str, str]) -> None:
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name, "labels": dict(labels)}})  # fmt: skip
    c.create_namespace(name)  # waits for the default ServiceAccount


def queue_with_room(api: Api, ns: str, pods: int) -> None:
    """A GPUQueue serving *ns* whose quota holds every pod of the burst twice over."""
    body = {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUQueue", "metadata": {"name": f"{ns}-queue"},
            "spec": {"namespaces": [ns], "nominalQuota": {"compute": 100 * pods}}}  # fmt: skip
    api.request("POST", "/apis/gpupool.io/v1alpha1/gpuqueues", body)


# ------------------------------------------------------------------------------------------------ measurements


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime, in seconds, of a /proc `stat` file (a process's, or one thread's under task/)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return 0.0 if pid is None else stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each thread of a process (tid -> seconds)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = stat_cpu_seconds(task / "stat")
        except OSError:  # the thread ended
            continue
    return out


class ThreadMeter:
    """``--thread-cpu``: the extender's and the controller's CPU per pod by thread (their names read by
    ``py-spy dump``; numbered pool threads summed as one, ``gpupool-bind_3`` -> ``gpupool-bind``): which of the
    event loop, the binds, the watches costs what, at almost no cost to the phase measured (docs/e2e.md)."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.spy = Path(sys.executable).parent / "py-spy"

    def pid(self, name: str) -> int:
        pid = self.c.processes[name].pid
        assert pid is not None, f"{name} is not running"
        return pid

    def sample(self) -> dict[str, dict[int, float]]:
        return {n: thread_cpu_seconds(self.pid(n)) for n in (EXTENDER, CONTROLLER)}

    def names(self, pid: int) -> dict[int, str]:
        try:
            done = subprocess.run([str(self.spy), "dump", "--json", "--nonblocking", "-p", str(pid)],
                                  capture_output=True, timeout=60, check=True)  # fmt: skip
            threads = json.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            return {}
        return {int(t["os_thread_id"]): re.sub(r"_\d+$", "", str(t.get("thread_name") or "?"))
                for t in threads if t.get("os_thread_id")}  # fmt: skip

    def per_pod_ms(self, before: Mapping[str, dict[int, float]], pods: int) -> dict[str, dict[str, float]]:
        after = self.sample()
        out: dict[str, dict[str, float]] = {}
        for proc, threads in after.items():
            names = self.names(self.pid(proc))
            groups: dict[str, float] = {}
            for tid, secs in threads.items():
                name = names.get(tid, "native")  # threads Python did not start (grpc, uvloop's, OpenBLAS)
                groups[name] = groups.get(name, 0.0) + secs - before[proc].get(tid, 0.0)
            out[proc] = {k: round(1000 * v / pods, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
                         if v > 0}  # fmt: skip
        return out


class CpuMeter:
    NAMES = (EXTENDER, CONTROLLER, SCHEDULER, "kube-apiserver", FLOOR_SCHEDULER)

    def __init__(self, c: Cluster, extra: Mapping[str, int] | None = None) -> None:
        self.c = c
        self.extra = dict(extra or {})  # name -> pid of processes the cluster did not start (the floor extender)

    def sample(self) -> dict[str, float]:
        out = {n: cpu_seconds(self.c.processes[n].pid) for n in self.NAMES if n in self.c.processes}
        return out | {n: cpu_seconds(pid) for n, pid in self.extra.items()}

    @staticmethod
    def per_pod_ms(before: Mapping[str, float], after: Mapping[str, float], pods: int) -> dict[str, float]:
        return {n: round(1000 * (after[n] - before[n]) / pods, 2) for n in after}


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def audit_key(event: Mapping[str, Any]) -> str | None:
    """``audit VERB nodes CLIENT`` for one audit event of `AUDIT_NODES`, or None (a stage not counted): a watch
    counts when it starts, anything else when it completes. CLIENT: the user name and the user agent's product."""
    verb = str(event.get("verb", "")).upper()
    if event.get("stage") != ("ResponseStarted" if verb == "WATCH" else "ResponseComplete"):
        return None
    ref = event.get("objectRef") or {}
    res = str(ref.get("resource", "")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    if verb == "WATCH":
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(str(event.get("requestURI", ""))).query)
        if q.get("resourceVersion", ["0"])[0] in ("", "0") or q.get("sendInitialEvents") == ["true"]:
            verb = "WATCH+initial"
    user = str((event.get("user") or {}).get("username", ""))
    agent = str(event.get("userAgent", "")).split(" ", 1)[0]
    return f"audit {verb} {res} {user} {agent}"


class AuditTally:
    """Running counts of `audit_key` over an audit log that grows (read from where the last sample stopped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return dict(self.counts)
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            key = audit_key(json.loads(line))
            if key is not None:
                self.counts[key] = self.counts.get(key, 0.0) + 1
        return dict(self.counts)


#: the API server's time waiting for an admission webhook (`RequestMeter` key prefix; `webhook_mean_ms`)
WEBHOOK_SECONDS = "webhook-seconds "
#: keys reported as counts per window (`RequestMeter.counts`), not per pod
COUNTED = ("audit ", "terminated watchers ")


class RequestMeter:
    """The API server's own counts (its /metrics), by what was asked: a measure of what a pod costs the API
    server that does not move with the machine's load. Keys: ``VERB resource[/subresource]`` (``.group`` after
    the resource for other API groups) for requests; ``webhook NAME OPERATION`` for admission webhook calls;
    ``watch events RESOURCE`` for the events the API server sent to watchers (the fan-out of every write);
    ``terminated watchers RESOURCE`` for the watches the API server closed because their reader fell behind.

    With *audit* (the API server's audit log, `AUDIT_NODES` policy) also ``audit VERB nodes CLIENT``: who asked
    what of Nodes (``WATCH+initial`` is a watch that starts with every Node as an ADDED event: no resourceVersion,
    ``resourceVersion=0`` or ``sendInitialEvents``), counted since the meter was made."""

    def __init__(self, api: Api, audit: Path | None = None) -> None:
        self.api = api
        self.audit = AuditTally(audit) if audit is not None else None

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric, labels, value in _SAMPLE.findall(self.api.text("/metrics")):
            lab = dict(_LABEL.findall(labels))
            if metric == "apiserver_request_total":
                res = lab.get("resource", "")
                if lab.get("group"):
                    res += "." + lab["group"]
                if lab.get("subresource"):
                    res += "/" + lab["subresource"]
                key = f"{lab.get('verb', '')} {res}"
            elif metric == "apiserver_admission_webhook_admission_duration_seconds_count":
                key = f"webhook {lab.get('name', '')} {lab.get('operation', '')}"
            elif metric == "apiserver_admission_webhook_admission_duration_seconds_sum":
                key = f"{WEBHOOK_SECONDS}{lab.get('name', '')} {lab.get('operation', '')}"
            elif metric == "apiserver_watch_events_total":
                res = lab.get("resource") or lab.get("kind", "")
                key = f"watch events {res}.{lab['group']}" if lab.get("group") else f"watch events {res}"
            elif metric == "apiserver_terminated_watchers_total":  # closed by the API server: too slow a reader
                res = lab.get("resource", "")
                key = f"terminated watchers {res}.{lab['group']}" if lab.get("group") else f"terminated watchers {res}"
            else:
                continue
            out[key] = out.get(key, 0.0) + float(value)
        if self.audit is not None:
            out.update(self.audit.sample())
        return out

    @staticmethod
    def per_pod(before: Mapping[str, float], after: Mapping[str, float], pods: int) -> dict[str, float]:
        """What changed between two samples, per pod, largest first; keys that moved by less than one in 200 pods
        (and by less than 2: an informer's resync, a lease renewal) are left out, and so are the `COUNTED` keys
        (`counts`)."""
        delta = {k: v - before.get(k, 0.0) for k, v in after.items() if not k.startswith((*COUNTED, WEBHOOK_SECONDS))}
        least = max(2.0, pods / 200)
        return {k: round(v / pods, 3) for k, v in sorted(delta.items(), key=lambda kv: (-kv[1], kv[0])) if v >= least}

    @staticmethod
    def counts(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
        """The `COUNTED` keys that moved between two samples, as counts (rare events: a few watches, not per pod)."""
        delta = {k: int(v - before.get(k, 0.0)) for k, v in after.items() if k.startswith(COUNTED)}
        return {k: v for k, v in sorted(delta.items(), key=lambda kv: (-kv[1], kv[0])) if v}


def pool(n: int) -> Callable[[Callable[[T], Any], list[T]], list[Any]]:
    """``pool(k)(fn, items)``: fn over items on k threads."""

    def run(fn: Callable[[T], Any], items: list[T]) -> list[Any]:
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(fn, items))

    return run


class Profiler:
    """``--profile DIR``: py-spy (installed by ``make setup``) samples the extender and the controller from the
    gpupool phase's first gate removal to its last bind, one raw (collapsed-stack) file per process and run:
    where their per-pod CPU goes (docs/e2e.md, issue 16)."""

    def __init__(self, c: Cluster, out: Path) -> None:
        self.c, self.out = c, out
        self.spy = Path(sys.executable).parent / "py-spy"
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, label: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (EXTENDER, CONTROLLER):
            cmd = [str(self.spy), "record", "--nonblocking", "-r", "200", "--format", "raw", "-p",
                   str(self.c.processes[name].pid), "-o", str(self.out / f"{label}-{name}.txt")]  # fmt: skip
            self.running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for p in self.running:
            p.send_signal(signal.SIGINT)
        for p in self.running:
            p.wait(30)
        self.running.clear()


class GoProfiler:
    """``--pprof DIR``: CPU profiles (`/debug/pprof/profile`) of kube-apiserver and gpupool-scheduler over the
    first ``seconds`` after each phase's release (plain, floor, gpupool alike): what a gpupool pod costs the Go
    processes beyond a plain one, by function (``go tool pprof -top -diff_base plain.pb.gz gpupool.pb.gz``)."""

    def __init__(self, c: Cluster, out: Path, seconds: int) -> None:
        self.c, self.out, self.seconds = c, out, seconds
        self.running: list[threading.Thread] = []
        self.window: tuple[float, float] | None = None
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE  # loopback, self-signed serving certificates; the admin cert authenticates
        self.ctx.load_cert_chain(str(c.pki / "admin.crt"), str(c.pki / "admin.key"))

    def targets(self) -> dict[str, str]:
        return {"kube-apiserver": self.c.api_url, SCHEDULER: f"https://127.0.0.1:{self.c.ports[SCHEDULER]}"}

    def start(self, label: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        ctx = self.ctx

        def fetch(name: str, url: str) -> None:
            u = urllib.parse.urlsplit(url)
            cn = http.client.HTTPSConnection(u.hostname or "127.0.0.1", u.port or 443, context=ctx,
                                             timeout=self.seconds + 60)  # fmt: skip
            try:
                cn.request("GET", f"/debug/pprof/profile?seconds={self.seconds}")
                r = cn.getresponse()
                data = r.read()
                if r.status == 200:
                    (self.out / f"{label}-{name}.pb.gz").write_bytes(data)
                else:
                    print(f"# pprof {name}: HTTP {r.status} {data[:200]!r}", file=sys.stderr, flush=True)
            except (OSError, http.client.HTTPException) as exc:
                print(f"# pprof {name}: {exc}", file=sys.stderr, flush=True)
            finally:
                cn.close()

        now = time.monotonic()
        self.window = (now, now + self.seconds)
        for name, url in self.targets().items():
            t = threading.Thread(target=fetch, args=(name, url), daemon=True)
            t.start()
            self.running.append(t)

    def stop(self) -> None:
        for t in self.running:
            t.join()
        self.running.clear()


def scheduler_path(
    api: Api, cpu: CpuMeter, meter: RequestMeter, ns: str, kind: str, m: int, timeout: float,
    profiler: Profiler | None = None, threads: ThreadMeter | None = None, pprof: GoProfiler | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Create m held pods, remove every hold at once, time from the first removal to the last bound."""
    watch = BindWatch(api, ns)
    names = [f"{kind}-{i:05d}" for i in range(m)]
    r0 = meter.sample()
    t0 = time.monotonic()
    pool(16)(lambda n: api.request("POST", f"/api/v1/namespaces/{ns}/pods",
                                   pod_body(n, kind, hold=True, scheduler=True)), names)  # fmt: skip
    created = time.monotonic() - t0
    time.sleep(1.0)  # let the scheduler's informer hold every gated pod
    release = [{"op": "test", "path": "/spec/schedulingGates/0/name", "value": HOLD_GATE},
               {"op": "remove", "path": "/spec/schedulingGates"}]  # fmt: skip
    sent: dict[str, float] = {}

    def ungate(n: str) -> None:
        sent[n] = time.monotonic()
        api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{n}", release, "application/json-patch+json")

    if profiler is not None:
        profiler.start(ns)
        time.sleep(1.0)  # py-spy attached
    r1 = meter.sample()
    c0 = cpu.sample()
    th0 = threads.sample() if threads is not None else None
    t_rel = time.monotonic()
    if pprof is not None:
        pprof.start(ns)
    pool(32)(ungate, names)
    released = time.monotonic() - t_rel
    bound = watch.wait(names, timeout)
    c1 = cpu.sample()
    by_thread = threads.per_pod_ms(th0, m) if threads is not None and th0 is not None else None
    if profiler is not None:
        profiler.stop()
    pprof_pods = None
    if pprof is not None and pprof.window is not None:
        pprof.stop()
        pprof_pods = sum(1 for t in bound.values() if pprof.window[0] <= t <= pprof.window[1])
    r2 = meter.sample()
    time.sleep(SETTLE_S)  # what the binds cause afterwards (kwok's status, the controller's GPUNode status)
    r3 = meter.sample()
    watch.stop = True
    last = max(bound.values()) - t_rel
    lat = [bound[n] - sent[n] for n in names]  # this pod's gate removal sent -> its bind seen
    return {
        "seconds": round(last, 2),
        "pods_per_s": round(m / last, 1),
        "p50_s": round(quantile(lat, 0.50), 3),
        "p99_s": round(quantile(lat, 0.99), 3),
        "create_seconds": round(created, 2),
        "release_seconds": round(released, 2),
        "after_release_s": round(last - released, 2),  # ~0: the run was bound by the gate removals, not the scheduler
        "first_bound_s": round(min(bound.values()) - t_rel, 2),
        "cpu_ms_per_pod": CpuMeter.per_pod_ms(c0, c1, m),
        **({"thread_cpu_ms_per_pod": by_thread} if by_thread is not None else {}),
        **({"pprof_pods_bound": pprof_pods} if pprof_pods is not None else {}),
        **request_summary({"create": (r0, r1), "release": (r1, r2), "settle": (r2, r3)}, m, ("release", "settle")),
    }


SETTLE_S = 10.0  # seconds after the last bind over which its aftermath is counted


#: what a pod's scheduling writes (gate removal, Binding, Events, status by kwok or kube-scheduler, GPUNode and
#: GPUQueue statuses); Leases and Node heartbeats are left out of the totals: they grow with the time, not the pods
POD_PATH = ("pods", "events", "gpunodes.", "gpuqueues.")


def request_summary(windows: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]], m: int,
                    scheduling: Iterable[str]) -> dict[str, Any]:  # fmt: skip
    """``requests_per_pod``: the API server's counts per pod in each window (`RequestMeter`), ``counts`` the
    `COUNTED` ones as they are;
    ``api_writes_per_pod`` / ``webhook_calls_per_pod`` / ``watch_events_per_pod``: totals over the windows named in
    *scheduling* (release to bound and what followed) of the writes and watch events of `POD_PATH` resources, and of
    the webhook calls."""
    per = {w: RequestMeter.per_pod(a, b, m) for w, (a, b) in windows.items()}
    out: dict[str, Any] = {"requests_per_pod": per, **request_totals(per, scheduling)}
    # watches the API server closed on a slow reader, and (--audit-nodes) who asked what of Nodes: counts
    out["counts"] = {w: RequestMeter.counts(a, b) for w, (a, b) in windows.items()}
    return out


def request_totals(per: Mapping[str, Mapping[str, float]], windows: Iterable[str]) -> dict[str, float]:
    """The totals above, and of them the GPUNode status writes and GPUNode watch events (what the controller's
    allocation summary costs: one write, and one event to every GPUNode watcher, per status written)."""
    totals = {"api_writes_per_pod": 0.0, "webhook_calls_per_pod": 0.0, "watch_events_per_pod": 0.0,
              "gpunode_status_writes_per_pod": 0.0, "gpunode_watch_events_per_pod": 0.0}  # fmt: skip
    for w in windows:
        for k, v in per[w].items():
            verb, _, res = k.partition(" ")
            if verb == "webhook":
                totals["webhook_calls_per_pod"] += v
            elif k.startswith("watch events "):
                watched = k.removeprefix("watch events ")
                if watched.startswith(POD_PATH):
                    totals["watch_events_per_pod"] += v
                if watched.startswith("gpunodes."):
                    totals["gpunode_watch_events_per_pod"] += v
            elif verb in ("POST", "PUT", "PATCH", "DELETE", "APPLY") and res.startswith(POD_PATH):
                totals["api_writes_per_pod"] += v
                if res.startswith("gpunodes.") and res.endswith("/status"):
                    totals["gpunode_status_writes_per_pod"] += v
    return {k: round(v, 3) for k, v in totals.items()}


def parse_time(s: str | None) -> float | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


def quantile(xs: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 200 pods = the 198th fastest)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, -(-int(q * 100 * len(s)) // 100) - 1))]


def full_path(api: Api, cpu: CpuMeter, meter: RequestMeter, ns: str, m: int, timeout: float) -> dict[str, Any]:
    """A burst of m ordinary gpupool pods; per-pod latency from create to bound on the bench's clock."""
    watch = BindWatch(api, ns)
    names = [f"full-{i:05d}" for i in range(m)]
    sent: dict[str, float] = {}

    refused: list[str] = []

    def create(n: str) -> None:
        sent[n] = time.monotonic()  # the latency counts from the first attempt, as a user retrying would see it
        for attempt in range(10):
            try:
                body = pod_body(n, "gpupool", hold=False, scheduler=False)
                api.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
                return
            except RuntimeError as exc:  # e.g. a webhook call timed out on a loaded machine: the user retries
                if "HTTP 409" in str(exc):
                    return  # an earlier attempt landed
                refused.append(str(exc)[:300])
                if attempt == 9:
                    raise
                time.sleep(1.0)

    r0 = meter.sample()
    c0 = cpu.sample()
    t0 = time.monotonic()
    pool(16)(create, names)
    created = time.monotonic() - t0
    bound = watch.wait(names, timeout)
    c1 = cpu.sample()
    r1 = meter.sample()
    time.sleep(SETTLE_S)
    r2 = meter.sample()
    watch.stop = True
    lat = [bound[n] - sent[n] for n in names]
    admitted = [watch.ungated[n] - sent[n] for n in names if n in watch.ungated]  # webhook + queue admission
    # cross-check with the API's own (1 s resolution) times: creationTimestamp -> PodScheduled
    api_lat: list[float] = []
    for p in api.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"]:
        created_at = parse_time(p["metadata"].get("creationTimestamp"))
        conds = {c["type"]: c for c in (p.get("status") or {}).get("conditions") or []}
        sched_at = parse_time(conds.get("PodScheduled", {}).get("lastTransitionTime"))
        if created_at is not None and sched_at is not None:
            api_lat.append(sched_at - created_at)
    return {
        "p50_s": round(quantile(lat, 0.50), 3),
        "p99_s": round(quantile(lat, 0.99), 3),
        "max_s": round(max(lat), 3),
        "mean_s": round(statistics.fmean(lat), 3),
        "admitted_p50_s": round(quantile(admitted, 0.50), 3) if admitted else None,
        "admitted_p99_s": round(quantile(admitted, 0.99), 3) if admitted else None,
        "create_seconds": round(created, 2),
        "create_retries": len(refused),
        "create_refusals": refused[:3],
        "burst_seconds": round(max(bound.values()) - t0, 2),
        "api_timestamps_p50_s": quantile(api_lat, 0.50) if api_lat else None,
        "api_timestamps_p99_s": quantile(api_lat, 0.99) if api_lat else None,
        "cpu_ms_per_pod": CpuMeter.per_pod_ms(c0, c1, m),
        "webhook_mean_ms": webhook_mean_ms(r0, r1),
        **request_summary({"burst": (r0, r1), "settle": (r1, r2)}, m, ("burst", "settle")),
    }


def webhook_mean_ms(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Mean time the API server waited for each admission webhook (`NAME OPERATION`) between two samples, from
    its ``apiserver_admission_webhook_admission_duration_seconds`` sum and count: the webhooks' latency during
    the burst, which sets how fast pods can be created."""
    out: dict[str, float] = {}
    for key, total in after.items():
        if not key.startswith(WEBHOOK_SECONDS):
            continue
        hook = key.removeprefix(WEBHOOK_SECONDS)
        calls = after.get(f"webhook {hook}", 0.0) - before.get(f"webhook {hook}", 0.0)
        if calls > 0:
            out[hook] = round((total - before.get(key, 0.0)) / calls * 1000, 2)
    return out


def verb_latency(metrics: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for verb in ("filter", "prioritize", "bind", "preempt"):
        s = re.search(rf'gpupool_extender_request_duration_seconds_sum{{verb="{verb}"}} (\S+)', metrics)
        n = re.search(rf'gpupool_extender_request_duration_seconds_count{{verb="{verb}"}} (\S+)', metrics)
        if s and n:
            out[verb] = {"count": float(n.group(1)), "sum_s": float(s.group(1))}
    return out


def verb_delta(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v, a in after.items():
        b = before.get(v, {"count": 0.0, "sum_s": 0.0})
        n = a["count"] - b["count"]
        if n:
            out[v] = {"count": int(n), "mean_ms": round(1000 * (a["sum_s"] - b["sum_s"]) / n, 2)}
    return out


def bind_results(metrics: str) -> dict[str, float]:
    """The extender's binds so far by result (ok / error)."""
    return {r: float(v) for r, v in re.findall(r'gpupool_extender_binds_total{result="(\w+)"} (\S+)', metrics)}


def holdings(metrics: str) -> int:
    found = re.search(r"^gpupool_extender_cache_holdings (\S+)", metrics, re.M)
    return int(float(found.group(1))) if found else -1


#: kube-scheduler's client rate when its configuration names none (KubeSchedulerConfiguration v1 defaults)
SCHEDULER_CLIENT_DEFAULT = {"qps": 50.0, "burst": 100}


def scheduler_client(c: Cluster) -> dict[str, Any]:
    """The gpupool-scheduler's client rate as configured (the config file it was started with): the plain pods'
    binds go through it, so the plain rate is capped near qps once the burst is spent."""
    cfg = yaml.safe_load((c.run_dir / f"{SCHEDULER}.yaml").read_text()) or {}
    conn = cfg.get("clientConnection") or {}
    return {k: conn.get(k, d) for k, d in SCHEDULER_CLIENT_DEFAULT.items()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def delete_pods(api: Api, stack: Stack, namespaces: Iterable[str], timeout: float) -> float:
    """Delete every pod of *namespaces* (no grace), wait until the API server and the extender's ledger have
    none left; returns the seconds it took. The next run starts from the same empty pool."""
    t0 = time.monotonic()
    namespaces = list(namespaces)
    for ns in namespaces:
        api.request("DELETE", f"/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=0")
    deadline = t0 + timeout
    while True:
        left = sum(len(api.request("GET", f"/api/v1/namespaces/{ns}/pods?limit=500")["items"]) for ns in namespaces)
        held = holdings(stack.extender_metrics())
        if left == 0 and held == 0:
            return round(time.monotonic() - t0, 2)
        if time.monotonic() > deadline:
            raise SystemExit(f"after {timeout:.0f} s, {left} pods remain and the extender holds {held}")
        time.sleep(1.0)


def one_run(
    api: Api, c: Cluster, stack: Stack, cpu: CpuMeter, meter: RequestMeter, args: argparse.Namespace, r: int
) -> dict[str, Any]:
    """One repetition: plain, gpupool and (unless skipped) the full path, each in namespaces of its own. The plain
    phase's pods are deleted before the next phase (unless ``--keep-plain-pods``; the ``--floor`` phase's always),
    so every phase starts on the same cluster: the ratios compare the pods, not a cluster with M pods more."""
    m = args.pods
    skip = {WEBHOOK_SKIP[0]: WEBHOOK_SKIP[1]}
    ns_plain, ns_gpupool, ns_full = f"bench-plain-{r}", f"bench-gpupool-{r}", f"bench-full-{r}"
    ns_floor = f"bench-floor-{r}"
    for ns in (ns_plain, ns_gpupool, *([ns_floor] if args.floor else [])):
        namespace(api, c, ns, skip)
    load = {"start": load_average()}
    results: dict[str, Any] = {}
    threads = ThreadMeter(c) if args.thread_cpu else None
    pprof = GoProfiler(c, args.pprof / f"run{r}", args.pprof_seconds) if args.pprof else None
    if pprof is not None:  # the same window with no pods: what every phase's profile holds besides its pods
        pprof.start(f"idle-{r}")
        pprof.stop()
    results["plain"] = scheduler_path(api, cpu, meter, ns_plain, "plain", m, args.timeout, threads=threads,
                                      pprof=pprof)  # fmt: skip
    print(f"[run {r}] plain:   {results['plain']}", flush=True)
    def cleared(ns: str) -> float:
        """The phase's pods deleted: the next phase starts on the cluster this one started on."""
        took = delete_pods(api, stack, [ns], args.timeout)
        time.sleep(SETTLE_S)  # the deletions' events reach every watcher before the next window opens
        return took

    if not args.keep_plain_pods:
        results["between_phases_seconds"] = cleared(ns_plain)
    if args.floor:
        results["floor"] = scheduler_path(api, cpu, meter, ns_floor, "floor", m, args.timeout, threads=threads,
                                          pprof=pprof)  # fmt: skip
        print(f"[run {r}] floor:   {results['floor']}", flush=True)
        results["after_floor_seconds"] = cleared(ns_floor)
    v0, b0 = verb_latency(em := stack.extender_metrics()), bind_results(em)
    profiler = Profiler(c, args.profile) if args.profile else None
    results["gpupool"] = scheduler_path(api, cpu, meter, ns_gpupool, "gpupool", m, args.timeout, profiler, threads,
                                        pprof)  # fmt: skip
    em = stack.extender_metrics()
    results["gpupool"]["extender_verbs"] = verb_delta(v0, verb_latency(em))
    results["gpupool"]["binds"] = {k: int(v - b0.get(k, 0.0)) for k, v in bind_results(em).items()}
    load["gpupool_end"] = load_average()
    print(f"[run {r}] gpupool: {results['gpupool']}", flush=True)
    ratio = results["gpupool"]["pods_per_s"] / results["plain"]["pods_per_s"]
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "pods": m,
        "plain_pods_per_s": results["plain"]["pods_per_s"],
        "gpupool_pods_per_s": results["gpupool"]["pods_per_s"],
        "ratio": round(ratio, 3),
        # --floor: the floor extender's phase (bench/floor_extender), the ratio's ceiling on this machine
        "floor_pods_per_s": results["floor"]["pods_per_s"] if args.floor else None,
        "floor_ratio": (
            round(results["floor"]["pods_per_s"] / results["plain"]["pods_per_s"], 3) if args.floor else None
        ),
        "gpupool_vs_floor": (
            round(results["gpupool"]["pods_per_s"] / results["floor"]["pods_per_s"], 3) if args.floor else None
        ),
        "full_path_p50_s": None,
        "full_path_p99_s": None,
        "extender_cpu_ms_per_pod": None,
        "controller_cpu_ms_per_pod": None,
        # the target's yardstick: the gpupool scheduler path's per-pod latency, gate removal -> bound, p99
        "scheduler_path_p99_s": results["gpupool"]["p99_s"],
        "full_vs_scheduler_p99": None,
        # the API server's writes per pod from release to bound (+ SETTLE_S): load-insensitive, what gpupool adds
        "plain_api_writes_per_pod": results["plain"]["api_writes_per_pod"],
        "gpupool_api_writes_per_pod": results["gpupool"]["api_writes_per_pod"],
    }
    if not args.no_full_path:
        namespace(api, c, ns_full, {})
        queue_with_room(api, ns_full, m)
        time.sleep(2.0)  # the controller and the webhook see the queue
        v0, b0 = verb_latency(em := stack.extender_metrics()), bind_results(em)
        results["full_path"] = full_path(api, cpu, meter, ns_full, m, args.timeout)
        em = stack.extender_metrics()
        results["full_path"]["extender_verbs"] = verb_delta(v0, verb_latency(em))
        results["full_path"]["binds"] = {k: int(v - b0.get(k, 0.0)) for k, v in bind_results(em).items()}
        print(f"[run {r}] full path: {results['full_path']}", flush=True)
        fp = results["full_path"]
        out.update(
            full_path_p50_s=fp["p50_s"],
            full_path_p99_s=fp["p99_s"],
            extender_cpu_ms_per_pod=fp["cpu_ms_per_pod"].get(EXTENDER),
            controller_cpu_ms_per_pod=fp["cpu_ms_per_pod"].get(CONTROLLER),
            full_vs_scheduler_p99=round(fp["p99_s"] / results["gpupool"]["p99_s"], 3),
        )
    load["end"] = load_average()
    out["load_average"] = load  # os.getloadavg(): 1, 5, 15 minutes, at the run's start, after gpupool, at its end
    out["details"] = results
    out["admission_interval_s"] = float(args.admission_interval)
    out["plain_pods_kept"] = bool(args.keep_plain_pods)
    out["scheduler_client"] = scheduler_client(c)
    if r + 1 < args.runs:  # the next run starts from an empty pool
        out["cleanup_seconds"] = delete_pods(api, stack, (ns_plain, ns_gpupool, ns_full, ns_floor), args.timeout)
    return out


MEDIAN_KEYS = ("plain_pods_per_s", "gpupool_pods_per_s", "ratio", "floor_pods_per_s", "floor_ratio",
               "gpupool_vs_floor", "full_path_p50_s", "full_path_p99_s",
               "extender_cpu_ms_per_pod", "controller_cpu_ms_per_pod", "scheduler_path_p99_s",
               "full_vs_scheduler_p99", "plain_api_writes_per_pod", "gpupool_api_writes_per_pod")  # fmt: skip


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in MEDIAN_KEYS:
        xs = [r[k] for r in runs if r.get(k) is not None]
        out[k] = round(statistics.median(xs), 3) if xs else None
    return out


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--runs", type=int, default=1, help="repetitions on the same cluster (pods deleted between)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-full-path", action="store_true", help="skip the full-path burst")
    ap.add_argument("--admission-interval", default="1.0", help="controller admission period (product default 1 s)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds to wait for each phase's pods to bind")
    ap.add_argument("--keep", action="store_true", help="leave the run directory")
    ap.add_argument("--scheduler-qps", type=float,
                    help="kube-scheduler's client QPS (chart value scheduler.clientConnection.qps; default the chart)")
    ap.add_argument("--scheduler-burst", type=int, help="kube-scheduler's client burst (default the chart's)")
    ap.add_argument("--keep-plain-pods", action="store_true",
                    help="leave the plain phase's pods bound during the gpupool phase (before 2026-12-03 the bench "
                    "always did: the gpupool phase then ran on a cluster holding M more pods than the plain one)")
    ap.add_argument("--floor", action="store_true",
                    help="a third phase: pods of a second kube-scheduler whose extender is bench/floor_extender (Go, "
                    "built with go at start): floor_ratio = the most any extender reaches on this machine")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy the extender and the controller over each gpupool release window (raw stacks in DIR)")
    ap.add_argument("--pprof", type=Path, metavar="DIR",
                    help="CPU profiles of kube-apiserver and gpupool-scheduler over each phase's first seconds")
    ap.add_argument("--pprof-seconds", type=int, default=5, help="length of each --pprof window")
    ap.add_argument("--thread-cpu", action="store_true",
                    help="the extender's and the controller's CPU per pod by thread in each scheduler-path phase")
    ap.add_argument("--audit-nodes", action="store_true",
                    help="audit log of every Node request; details.*.counts then names who asked what of Nodes")
    args = ap.parse_args()
    m = args.pods
    if m * 2 > args.nodes * 8:
        ap.error(f"--pods {m}: the plain run needs m GPUs of {args.nodes * 8}; raise --nodes or lower --pods")
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    nodes = [FakeNode(f"n-{i:04d}", gpus=8, gpu_model="A100-80GB", gpu_memory_mib=81920) for i in range(args.nodes)]
    run_dir = Path(tempfile.mkdtemp(prefix="gpupool-bench-"))
    print(f"# run directory {run_dir}", flush=True)
    c = Cluster(run_dir=run_dir, nodes=[], audit_policy=AUDIT_NODES if args.audit_nodes else None,
                profiling=args.pprof is not None)  # fmt: skip
    t0 = time.monotonic()
    client = {k: v for k, v in (("qps", args.scheduler_qps), ("burst", args.scheduler_burst)) if v is not None}
    floor_url = f"http://127.0.0.1:{free_port()}" if args.floor else None
    floor_bin = build_floor_extender(run_dir) if floor_url else None
    stack = Stack(
        c, nodes=nodes, scheduler_verbosity=1, chart_values={"scheduler": {"clientConnection": client}},
        controller_env={"GPUPOOL_ADMISSION_INTERVAL_SECONDS": args.admission_interval},
        publisher_env={"GPUPOOL_HEARTBEAT_INTERVAL_SECONDS": "3600", "GPUPOOL_HEALTH_INTERVAL_SECONDS": "5"},
    )  # fmt: skip
    floor: subprocess.Popen[bytes] | None = None
    try:  # an interrupted run (Ctrl-C) still stops every process it started
        c.up(nodes=False)
        api = Api(c)
        if floor_url and floor_bin:
            floor = start_floor_extender(c, floor_bin, floor_url)
        pool(16)(lambda n: api.request("POST", "/api/v1/nodes", node_body(n)), nodes)
        c.wait_nodes_ready([n.name for n in nodes], timeout=1800)
        setup: dict[str, Any] = {"nodes_ready_s": round(time.monotonic() - t0, 1)}
        print(f"# control plane + {args.nodes} kwok nodes in {setup['nodes_ready_s']} s", flush=True)
        stack.up(timeout=1800)
        setup["stack"] = stack.timings
        setup["scheduler_client"] = scheduler_client(c)
        print(f"# gpupool stack up {stack.timings} (scheduler config: {stack.scheduler_config_source})", flush=True)
        if floor is not None and floor_url:
            start_floor_scheduler(c, stack, floor_url)
        cpu = CpuMeter(c, {"floor-extender": floor.pid} if floor is not None else None)
        meter = RequestMeter(api, c.audit_log if args.audit_nodes else None)
        namespace(api, c, "warm", {WEBHOOK_SKIP[0]: WEBHOOK_SKIP[1]})
        # warm-up: a few pods of each kind (informers, connection pools, the extender's first requests)
        scheduler_path(api, cpu, meter, "warm", "plain", 20, args.timeout)
        scheduler_path(api, cpu, meter, "warm", "gpupool", 20, args.timeout)
        if args.floor:
            scheduler_path(api, cpu, meter, "warm", "floor", 20, args.timeout)
        delete_pods(api, stack, ["warm"], args.timeout)
        runs: list[dict[str, Any]] = []
        for r in range(args.runs):
            runs.append(one_run(api, c, stack, cpu, meter, args, r))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "details"}), flush=True)
            med = medians(runs)
            out: dict[str, Any] = {"nodes": args.nodes, "pods": m, **med,
                                   "runs_done": len(runs), "median": med,
                                   "setup": setup, "runs": runs}  # fmt: skip
            if args.json:  # after every run: a long session keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(out, indent=2) + "\n")
        print("median: " + json.dumps(med), flush=True)
    finally:
        if floor is not None:
            floor.terminate()
            floor.wait(10)
        stack.down()
        c.down(remove_run_dir=not args.keep)
    return 0


def build_floor_extender(run_dir: Path) -> Path:
    """`go build` of bench/floor_extender into *run_dir* (the standard library only: no download)."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("--floor builds bench/floor_extender with go, which is not on PATH")
    out = run_dir / "floor-extender"
    subprocess.run([go, "build", "-o", str(out), "."], cwd=FLOOR_SOURCE, check=True)
    return out


def start_floor_scheduler(c: Cluster, stack: Stack, url: str) -> None:
    """A second kube-scheduler, `FLOOR_SCHEDULER`: gpupool-scheduler's configuration with the floor extender at
    *url*, interested in `FLOOR` pods."""
    cfg = yaml.safe_load(stack.render_scheduler_config())
    for profile in cfg.get("profiles") or []:
        profile["schedulerName"] = FLOOR_SCHEDULER
    extender = cfg["extenders"][0]
    extender["managedResources"] = [{"name": FLOOR, "ignoredByScheduler": True}]
    c.start_gpupool_scheduler(url, config_yaml=yaml.safe_dump(cfg, sort_keys=False), name=FLOOR_SCHEDULER,
                              verbosity=1)  # fmt: skip


def start_floor_extender(c: Cluster, binary: Path, url: str) -> subprocess.Popen[bytes]:
    """The floor extender on *url*, binding as kube-scheduler's own identity (its kubeconfig's client cert)."""
    user = yaml.safe_load(c.kubeconfig_for("scheduler").read_text())["users"][0]["user"]
    listen = url.removeprefix("http://")
    log = (c.run_dir / "floor-extender.log").open("wb")
    proc = subprocess.Popen([str(binary), listen, c.api_url, str(c.pki / "ca.crt"), user["client-certificate"],
                             user["client-key"]], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # listening once a request with no body is refused with 400
        try:
            cn = http.client.HTTPConnection(listen, timeout=2)
            cn.request("POST", "/filter", body=b"")
            if cn.getresponse().status == 400:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the floor extender did not start: see {c.run_dir / 'floor-extender.log'}")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
