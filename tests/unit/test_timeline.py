"""`gpupool simulate --timeline` (gpupool/simulator/timeline.py) and the snapshot format (snapshot.py) on tiny
synthetic traces and clusters: departures free capacity, quota changes waits, preemption, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from gpupool import resources
from gpupool.groups import GroupSpec
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.pool import PoolConfig, build_pool
from gpupool.queues import PodEntry, QueueSpec
from gpupool.quota import Limit
from gpupool.request import ContainerRequest, PodRequest
from gpupool.simulator import snapshot as snapshot_format
from gpupool.simulator import timeline
from gpupool.simulator.trace import TraceError, load_nodes, load_pods, load_times

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model"
POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,"
              "scheduled_time")


def write_trace(tmp: Path, nodes: list[str], pods: list[str]) -> tuple[Path, Path]:
    node_file, pod_file = tmp / "nodes.csv", tmp / "pods.csv"
    node_file.write_text("\n".join([NODE_HEADER, *nodes]) + "\n")
    pod_file.write_text("\n".join([POD_HEADER, *pods]) + "\n")
    return node_file, pod_file


def trace_run(tmp: Path, nodes: list[str], pods: list[str], plan: dict[str, Any] | None = None,
              **kwargs: Any) -> timeline.TimelineResult:  # fmt: skip
    node_file, pod_file = write_trace(tmp, nodes, pods)
    queue_plan = timeline.parse_queue_plan(plan) if plan is not None else None
    trace_nodes = load_nodes(node_file)
    scenario = timeline.scenario_from_trace(trace_nodes, load_pods(pod_file), load_times(pod_file), queue_plan,
                                            policy="bestfit", seed=kwargs.pop("seed", 1), **kwargs)  # fmt: skip
    return timeline.run(scenario)


ONE_GPU = ["n0,8000,32768,1,V100"]


def test_a_departure_frees_the_capacity_a_later_pod_waits_for(tmp_path: Path) -> None:
    pods = ["a,1000,1024,1,1000,,LS,Running,0,100,0", "b,1000,1024,1,1000,,LS,Running,10,60,10"]
    result = trace_run(tmp_path, ONE_GPU, pods, step=5.0)
    # b arrives at 10 while a holds the only GPU; a leaves at 100, so b waits 90 s and runs 50 s
    assert sorted(result.waits["(none)"]) == [0.0, 90.0]
    assert result.admitted == 2 and result.completed == 2 and not result.unfinished
    assert result.end == 150.0
    by_time = dict(zip(result.times, result.utilisation, strict=True))
    assert by_time[5.0] == 100.0 and by_time[95.0] == 100.0 and by_time[145.0] == 100.0
    assert result.utilisation[-1] == 0.0
    assert max(result.pending) == 1 and result.pending[-1] == 0


def test_host_cpu_is_held_from_admission_so_one_pass_never_admits_past_it(tmp_path: Path) -> None:
    # two GPUs but CPU for one pod: the second waits (the QueueManager's reservation carries the pod's CPU)
    pods = ["a,1500,1024,1,1000,,LS,Running,0,100,0", "b,1500,1024,1,1000,,LS,Running,0,100,0"]
    result = trace_run(tmp_path, ["n0,2000,32768,2,V100"], pods)
    assert sorted(result.waits["(none)"]) == [0.0, 100.0]


def test_without_a_departure_the_later_pod_never_runs(tmp_path: Path) -> None:
    pods = ["a,1000,1024,1,1000,,LS,Running,0,100,0", "b,1000,1024,1,1000,,LS,Running,10,60,10"]
    result = trace_run(tmp_path, ONE_GPU, pods, horizon=80.0)
    assert result.waits["(none)"] == [0.0]
    assert result.unfinished["(none)"] == [70.0]  # censored at the horizon, counted in the percentiles
    assert result.wait_percentile("(none)", 100) == 70.0


TWO_QUEUE_PODS = [f"p{i},1000,1024,1,1000,,LS,Running,0,100,0" for i in range(4)]
PLAN: dict[str, Any] = {
    "assign": "round-robin",
    "queues": [{"name": "team-a", "spec": {"nominalQuota": {"compute": 100}}},
               {"name": "team-b", "spec": {"nominalQuota": {"compute": 200}}}],
}  # fmt: skip


def test_a_quota_change_changes_the_waits(tmp_path: Path) -> None:
    nodes = ["n0,64000,262144,4,V100"]
    base = trace_run(tmp_path, nodes, TWO_QUEUE_PODS, PLAN)
    # round-robin: p0, p2 in team-a (one GPU of quota: p2 waits for p0), p1, p3 in team-b (two GPUs)
    assert sorted(base.waits["team-a"]) == [0.0, 100.0]
    assert base.waits["team-b"] == [0.0, 0.0]
    more = trace_run(tmp_path, nodes, TWO_QUEUE_PODS, PLAN, quotas={"team-a": 200})
    assert more.waits["team-a"] == [0.0, 0.0]
    out = more.as_json()
    assert out["wait_p99_s"] == {"team-a": 0.0, "team-b": 0.0} and base.as_json()["wait_p99_s"]["team-a"] == 99.0


def test_cohort_borrowing_lets_a_queue_use_what_the_other_does_not(tmp_path: Path) -> None:
    plan = json.loads(json.dumps(PLAN))
    for q in plan["queues"]:
        q["spec"]["cohort"] = "all"
    pods = [f"p{i},1000,1024,1,1000,,LS,Running,0,100,0" for i in (0, 2, 4)]
    result = trace_run(tmp_path, ["n0,64000,262144,4,V100"], pods, {**plan, "assign": "hash"}, seed=3)
    # wherever the hash puts them, the cohort's 3 GPUs of quota serve all three pods at once
    assert all(w == 0.0 for ws in result.waits.values() for w in ws) and result.admitted == 3


def test_the_same_seed_gives_the_same_run_and_the_seed_moves_pods_between_queues(tmp_path: Path) -> None:
    nodes = ["n0,64000,262144,4,V100", "n1,64000,262144,2,T4"]
    pods = [f"p{i},2000,4096,1,{(i % 4 + 1) * 250},,LS,Running,{i * 7},{i * 7 + 40 + i % 5},{i * 7}" for i in range(40)]
    plan = {**PLAN, "assign": "hash"}

    def run(seed: int) -> dict[str, Any]:
        out = trace_run(tmp_path, nodes, pods, plan, seed=seed).as_json()
        out.pop("seconds")
        return out

    first = run(7)
    assert first == run(7)
    assert first["admitted"] == 40
    parsed = timeline.parse_queue_plan(plan)
    picks = {seed: [parsed.pick(f"p{i}", i, seed).spec.name for i in range(40)] for seed in (7, 8)}  # type: ignore[union-attr]
    assert picks[7] != picks[8] and set(picks[7]) == {"team-a", "team-b"}


def test_a_higher_priority_pod_preempts_and_the_victim_runs_again_later() -> None:
    pool = build_pool(PoolConfig(slots_per_gpu=100, policies=("bestfit",), default_policy="bestfit"))
    pool.ledger.upsert_node(NodeInfo("n0", (GPUInfo("g0", 0, "V100", 16384),)))

    def job(name: str, at: float, priority: int) -> timeline.Job:
        request = PodRequest(uid=name, containers=(ContainerRequest("main", 0, 1, 100, 1024),), namespace="ns",
                             name=name, queue="q", priority=priority)  # fmt: skip
        return timeline.Job(PodEntry(request=request, created=at, gated=True), at, 100.0)

    queue = QueueSpec("q", nominal=Limit(compute=1000), namespaces=frozenset({"ns"}))
    scenario = timeline.Scenario(pool, [queue], [job("low", 0.0, 0), job("high", 10.0, 5)],
                                 namespaces={"ns": {}})  # fmt: skip
    result = timeline.run(scenario)
    assert result.preemptions == 1 and result.preemptions_by_queue == {"q": 1}
    # low runs 0..10, is evicted; high runs 10..110; low's copy joins at 10 and runs 110..210
    assert sorted(result.waits["q"]) == [0.0, 0.0, 100.0]
    assert result.completed == 2 and result.end == 210.0
    pool = build_pool(PoolConfig(slots_per_gpu=100, policies=("bestfit",), default_policy="bestfit"))
    pool.ledger.upsert_node(NodeInfo("n0", (GPUInfo("g0", 0, "V100", 16384),)))
    quiet = timeline.run(timeline.Scenario(pool, [queue], [job("low", 0.0, 0), job("high", 10.0, 5)],
                                           namespaces={"ns": {}}, preemption=False))  # fmt: skip
    assert quiet.preemptions == 0 and sorted(quiet.waits["q"]) == [0.0, 90.0]


def test_load_times_reads_the_columns_and_names_a_bad_field(tmp_path: Path) -> None:
    _, pod_file = write_trace(tmp_path, ONE_GPU, ["a,1000,1024,1,500,,BE,Running,5,105,20",
                                                  "b,1000,1024,1,500,,LS,Pending,7,9,"])  # fmt: skip
    times = load_times(pod_file)
    assert times["a"].duration == 85 and times["a"].qos == "BE" and times["b"].scheduled is None
    assert times["b"].duration == 2
    _, bad = write_trace(tmp_path, ONE_GPU, ["a,1000,1024,1,500,,LS,Running,50,10,50"])
    with pytest.raises(TraceError, match=r"pods.csv:2: field 'deletion_time': 10 is below 50"):
        load_times(bad)


@pytest.mark.parametrize(("doc", "words"), [
    ({"queues": []}, "field 'queues'"),
    ({"assign": "random", "queues": [{"name": "a"}]}, "field 'assign': 'random'"),
    ({"queues": [{"name": "a", "share": 0}]}, "queues[0].share: 0"),
    ({"queues": [{"name": "a", "colour": "red"}]}, "queues[0].colour: unknown"),
    ({"queues": [{"name": "a", "spec": {"nominalQuota": {"compute": "lots"}}}]}, "queues[0].spec: "),
    ({"queues": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
])  # fmt: skip
def test_a_bad_queue_plan_names_the_field(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(timeline.TimelineError) as info:
        timeline.parse_queue_plan(doc)
    assert words in str(info.value)


def test_quota_overrides() -> None:
    assert timeline.parse_quota_overrides(["team-a=400", "b=0"]) == {"team-a": 400, "b": 0}
    for bad, words in (("team-a", "QUEUE=COMPUTE"), ("team-a=x", "not a whole number"), ("a=-1", ">= 0")):
        with pytest.raises(timeline.TimelineError, match=words):
            timeline.parse_quota_overrides([bad])
    with pytest.raises(timeline.TimelineError, match="no such queue; the queues are a"):
        timeline.with_quotas([QueueSpec("a")], {"b": 100})


# --- the snapshot format --------------------------------------------------------------------------------


def gpunode(name: str, gpus: int) -> dict[str, Any]:
    items = [{"uuid": f"GPU-{name}-{i}", "index": i, "model": "T4", "memoryMiB": 16384, "health": "Healthy"}
             for i in range(gpus)]  # fmt: skip
    return {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUNode", "metadata": {"name": name, "uid": "x"},
            "spec": {}, "status": {"gpus": items, "heartbeatTime": "2025-01-01T00:00:00Z"}}  # fmt: skip


def gated_pod(name: str, namespace: str, compute: int, created: str) -> dict[str, Any]:
    limits = {resources.GPU: "1", resources.GPU_COMPUTE: str(compute), resources.GPU_MEMORY: "1024"}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": created,
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits},
                                 "env": [{"name": "A", "value": "1"}]}],
                 "schedulingGates": [{"name": resources.ADMISSION_GATE}]},
        "status": {"phase": "Pending"},
    }  # fmt: skip


def cluster_doc(quota: int) -> dict[str, Any]:
    queue = {"metadata": {"name": "team-a"}, "spec": {"namespaces": ["a"], "nominalQuota": {"compute": quota}}}
    pods = [gated_pod(f"p{i}", "a", 100, f"2025-01-01T00:00:0{i}Z") for i in range(3)]
    plain = {"metadata": {"name": "web", "namespace": "a", "uid": "u-web"}, "spec": {"containers": [{"name": "c"}]}}
    return snapshot_format.capture([{"metadata": {"name": "a", "labels": {"team": "a"}}}],
                                   [{"metadata": {"name": "n0", "labels": {"zone": "z"}}}], [gpunode("n0", 4)],
                                   [queue], [*pods, plain], taken=1735689600.0)  # fmt: skip


def test_capture_keeps_what_gpupool_reads_and_parse_reads_it_back() -> None:
    doc = json.loads(json.dumps(cluster_doc(100)))
    assert doc["kind"] == "GPUPoolSnapshot" and doc["version"] == 2 and doc["taken"] == "2025-01-01T00:00:00Z"
    assert [p["metadata"]["name"] for p in doc["pods"]] == ["p0", "p1", "p2"]  # the pod without slices is left out
    assert doc["podGroups"] == []
    assert "managedFields" not in doc["pods"][0]["metadata"] and "env" not in doc["pods"][0]["spec"]["containers"][0]
    snap = snapshot_format.parse(doc)
    assert [n.name for n in snap.nodes] == ["n0"] and len(snap.nodes[0].gpus) == 4
    assert snap.queues[0].name == "team-a" and snap.namespaces == {"a": {"team": "a"}}
    assert snap.node_labels == {"n0": {"zone": "z"}}
    assert [e.request.name for e in snap.pods] == ["p0", "p1", "p2"] and all(e.gated for e in snap.pods)


@pytest.mark.parametrize(("change", "words"), [
    ({"version": 3}, "field 'version': 3 is not supported; this gpupool reads versions 1, 2"),
    ({"podGroups": [{"key": "a/job/j", "minMembers": 0, "members": []}]}, "podGroups[0].minMembers: 0 is not"),
    ({"podGroups": [{"key": "a/job/j", "minMembers": 2, "members": ["p0"]}]}, "podGroups[0].members: must be"),
    ({"kind": "Pod"}, "field 'kind'"),
    ({"taken": "yesterday"}, "field 'taken'"),
    ({"pods": {}}, "field 'pods': must be a list of objects"),
])  # fmt: skip
def test_a_bad_snapshot_names_the_field(change: dict[str, Any], words: str) -> None:
    with pytest.raises(snapshot_format.SnapshotError) as info:
        snapshot_format.parse({**cluster_doc(100), **change})
    assert words in str(info.value)


def test_a_bad_pod_in_a_snapshot_is_left_out_and_named() -> None:
    doc = cluster_doc(100)
    doc["pods"][1]["spec"]["containers"][0]["resources"]["limits"][resources.GPU_COMPUTE] = "250"
    snap = snapshot_format.parse(doc)
    assert [e.request.name for e in snap.pods] == ["p0", "p2"]
    assert list(snap.problems) == ["pod a/p1"]


def test_a_snapshot_what_if_with_a_larger_quota_waits_less() -> None:
    snap = snapshot_format.parse(cluster_doc(100))
    config = PoolConfig(default_policy="bestfit", policies=("bestfit",))

    def waits(quotas: dict[str, int]) -> list[float]:
        scenario = timeline.scenario_from_snapshot(snap, config=config, seed=1, duration=600.0, quotas=quotas)
        return sorted(timeline.run(scenario).waits["team-a"])

    assert waits({}) == [0.0, 600.0, 1200.0]  # one GPU of quota: one pod after the other
    assert waits({"team-a": 300}) == [0.0, 0.0, 0.0]
    with_arrivals = timeline.scenario_from_snapshot(snap, config=config, seed=1, duration=600.0, arrivals=5,
                                                    interarrival=30.0, quotas={"team-a": 400})  # fmt: skip
    result = timeline.run(with_arrivals)
    assert result.admitted == 8 and result.start == 1735689600.0


def gang_doc(version: int = 2) -> dict[str, Any]:
    """A 4-GPU node; p0 (2 GPUs) first, then a Job's three 1-GPU pods (a group of 3, known from its owner)."""
    first = gated_pod("p0", "a", 100, "2025-01-01T00:00:00Z")
    first["spec"]["containers"][0]["resources"]["limits"][resources.GPU] = "2"
    job = [gated_pod(f"j{i}", "a", 100, f"2025-01-01T00:00:0{i + 1}Z") for i in range(3)]
    spec = GroupSpec("a/job/train", 3, 3, "Job a/train spec.parallelism")
    queue = {"metadata": {"name": "team-a"}, "spec": {"namespaces": ["a"], "nominalQuota": {"compute": 400}}}
    doc = snapshot_format.capture([{"metadata": {"name": "a"}}], [{"metadata": {"name": "n0"}}], [gpunode("n0", 4)],
                                  [queue], [first, *job], taken=1735689600.0,
                                  pod_groups={f"a/j{i}": spec for i in range(3)})  # fmt: skip
    if version == 1:  # as a version 1 file: no podGroups
        del doc["podGroups"]
        doc["version"] = 1
    return dict(json.loads(json.dumps(doc)))


def test_a_snapshot_keeps_pod_groups_and_reads_version_1() -> None:
    doc = gang_doc()
    assert doc["version"] == 2 and doc["podGroups"] == [
        {"key": "a/job/train", "minMembers": 3, "capacity": 3, "origin": "Job a/train spec.parallelism",
         "members": ["a/j0", "a/j1", "a/j2"]}]  # fmt: skip
    groups_of = {e.request.name: e.group for e in snapshot_format.parse(doc).pods}
    members = {g.key if g else None for n, g in groups_of.items() if n != "p0"}
    assert groups_of["p0"] is None and members == {"a/job/train"}
    assert groups_of["j0"] == GroupSpec("a/job/train", 3, 3, "Job a/train spec.parallelism")
    old = gang_doc(version=1)  # version 1: only annotated groups
    j0 = next(p for p in old["pods"] if p["metadata"]["name"] == "j0")
    j0["metadata"]["annotations"] = {resources.POD_GROUP: "g", resources.MIN_MEMBERS: "2"}
    groups_of = {e.request.name: e.group for e in snapshot_format.parse(old).pods}
    assert groups_of["j0"] is not None and groups_of["j0"].key == "a/pod-group/g" and groups_of["j1"] is None
    doc["podGroups"].append({"key": "a/job/other", "minMembers": 1, "members": ["a/j0"]})
    with pytest.raises(snapshot_format.SnapshotError, match=r"podGroups\[1\]\.members: pod a/j0 is also in group"):
        snapshot_format.parse(doc)


def test_a_gang_from_a_snapshot_is_admitted_whole() -> None:
    """p0 holds 2 of the 4 GPUs for 600 s: the Job's 3 pods wait for it together; pod by pod, two would start."""
    config = PoolConfig(default_policy="bestfit", policies=("bestfit",))

    def waits(doc: dict[str, Any]) -> list[float]:
        snap = snapshot_format.parse(doc)
        result = timeline.run(timeline.scenario_from_snapshot(snap, config=config, seed=1, duration=600.0))
        assert result.admitted == 4
        return sorted(result.waits["team-a"])

    assert waits(gang_doc()) == [0.0, 600.0, 600.0, 600.0]
    assert waits(gang_doc(version=1)) == [0.0, 0.0, 0.0, 600.0]  # no group known: pod by pod


def test_snapshot_cli_resolves_each_pods_group_once_per_owner(capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import pod_groups
    from kubeio.client import ApiError

    reads: list[str] = []

    class Kube:
        def request(self, method: str, path: str) -> dict[str, Any]:
            reads.append(path)
            if path.endswith("/jobs/gone"):
                raise ApiError(404, 'jobs.batch "gone" not found')
            return {"spec": {"parallelism": 2}}

    def owned(name: str, job: str) -> dict[str, Any]:
        pod = gated_pod(name, "a", 100, "2025-01-01T00:00:00Z")
        pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": job, "controller": True, "uid": "u"}]
        return pod

    pods = [owned("t0", "train"), owned("t1", "train"), owned("x0", "gone"), gated_pod("solo", "a", 50, "x")]
    found = pod_groups(Kube(), pods)
    assert reads == ["/apis/batch/v1/namespaces/a/jobs/train", "/apis/batch/v1/namespaces/a/jobs/gone"]
    assert found["a/t0"] == found["a/t1"] == GroupSpec("a/job/train", 2, 2, "Job a/train spec.parallelism")
    assert found["a/solo"] is None
    gone = found["a/x0"]
    assert gone is not None and gone.error is not None and "not found" in gone.error
    assert "warning: reading Job a/gone" in capsys.readouterr().err


# --- the command line -----------------------------------------------------------------------------------


def test_cli_writes_the_json_contract_and_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    node_file, pod_file = write_trace(tmp_path, ["n0,64000,262144,4,V100"], TWO_QUEUE_PODS)
    queues = tmp_path / "queues.yaml"
    queues.write_text(yaml.safe_dump(PLAN))
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(["simulate", "--timeline", "--nodes", str(node_file), "--pods", str(pod_file), "--queues",
                 str(queues), "--policy", "bestfit", "--json", str(out), "--plot", str(png)])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert {"utilisation", "wait_p50_s", "wait_p99_s", "preemptions"} <= set(data)  # the contract
    assert data["wait_p50_s"] == {"team-a": 50.0, "team-b": 0.0} and data["preemptions"] == 0
    assert set(data["wait_p99_s"]) == {"team-a", "team-b"} and all(isinstance(v, float)
                                                                   for v in data["wait_p99_s"].values())  # fmt: skip
    assert type(data["preemptions"]) is int
    assert all(isinstance(u, float) for u in data["utilisation"]) and max(data["utilisation"]) == 75.0
    assert png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "team-a" in printed and "wait p50" in printed
    code = main(["simulate", "--timeline", "--nodes", str(node_file), "--pods", str(pod_file), "--queues",
                 str(queues), "--policy", "bestfit", "--set-quota", "team-c=100"])  # fmt: skip
    assert code == 2 and "--set-quota team-c: no such queue" in capsys.readouterr().err


def test_cli_refuses_a_snapshot_of_another_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({**cluster_doc(100), "version": 9}))
    assert main(["simulate", "--timeline", "--snapshot", str(path)]) == 2
    assert f"{path}: field 'version': 9 is not supported" in capsys.readouterr().err
