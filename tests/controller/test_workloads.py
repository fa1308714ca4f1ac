"""Pod groups in the controller: owners read and translated (controller.workloads), gangs ungated as one,
released as one with an Event, explained, and a gang victim's evictions asked first (dry run)."""

from __future__ import annotations

from typing import Any

from controller import workloads
from controller.cli import explain_lines
from gpupool import resources
from gpupool.groups import Owner
from tests.controller.test_runtime import FakeKube, gpunode, pod, queue, run
from tests.controller.test_runtime import make as make_controller


class OwnerKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, Any] | None] = {}
        self.reads: list[str] = []
        self.dry_refuse: set[str] = set()

    async def get_object(self, path: str) -> dict[str, Any] | None:
        self.reads.append(path)
        return self.objects.get(path)

    async def evict(self, namespace: str, name: str, *, dry_run: bool = False) -> bool:
        if dry_run:
            self.calls.append(("dry-evict", f"{namespace}/{name}"))
            return name not in self.dry_refuse
        return await super().evict(namespace, name)


def make(**settings: Any) -> tuple[Any, OwnerKube]:
    c, _ = make_controller(**settings)
    kube = OwnerKube()
    c.kube = kube
    return c, kube


def owned(name: str, kind: str, owner: str, **kw: Any) -> dict[str, Any]:
    p = pod(name, **kw)
    p["metadata"]["ownerReferences"] = [{"apiVersion": "x", "kind": kind, "name": owner, "uid": f"o-{owner}",
                                         "controller": True}]  # fmt: skip
    return p


JOB = "/apis/batch/v1/namespaces/team-a/jobs/train"


def test_a_job_of_four_is_ungated_whole_once_all_four_exist_and_explain_says_what_it_waits_for() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 1000))
    kube.objects[JOB] = {"spec": {"parallelism": 4, "completions": 8}}
    for i in range(3):
        c.on_pod("ADDED", owned(f"w{i}", "Job", "train"))
    run(c.cycle(now=1.0))
    assert kube.reads == [JOB] and not kube.of("ungate")
    waits = [e for e in kube.of("event") if e[2] == "GPUPoolWaiting"]
    assert any("group team-a/job/train: 3 of 4 members present (Job team-a/train spec.parallelism); "
               "waiting for 1 more" in e[3] for e in waits)  # fmt: skip
    lines = explain_lines(c, "team-a", "w0", what_if=False)
    assert "pod group team-a/job/train (Job team-a/train spec.parallelism): 3 member(s) present, 0 admitted, " \
           "4 needed together" in lines
    assert "group waits for members: 1 more must be created" in lines
    c.on_pod("ADDED", owned("w3", "Job", "train"))
    run(c.cycle(now=2.0))
    assert sorted(x[1] for x in kube.of("ungate")) == [f"team-a/w{i}" for i in range(4)]
    assert kube.reads == [JOB]  # read once, cached


def test_explain_names_the_largest_member_without_a_place() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))
    ann = {resources.POD_GROUP: "g", resources.MIN_MEMBERS: "2"}
    c.on_pod("ADDED", pod("small", annotations=dict(ann)))
    c.on_pod("ADDED", pod("big", count=2, annotations=dict(ann)))
    run(c.cycle(now=1.0))
    assert not kube.of("ungate")
    lines = explain_lines(c, "team-a", "small", what_if=False)
    assert any(line.startswith("group waits for capacity: the largest member with no place (with the others "
                               "planned first) is team-a/small") for line in lines), lines  # fmt: skip


def test_deployment_pods_stay_individual_and_are_not_read() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))
    c.on_pod("ADDED", owned("web-1", "ReplicaSet", "web-abc"))
    run(c.cycle(now=1.0))
    assert kube.reads == [] and [x[1] for x in kube.of("ungate")] == ["team-a/web-1"]


def test_an_unreadable_owner_keeps_the_group_waiting_with_the_reason() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))

    async def forbidden(path: str) -> dict[str, Any] | None:
        raise RuntimeError("403: pytorchjobs.kubeflow.org is forbidden")

    kube.get_object = forbidden  # type: ignore[method-assign]
    c.on_pod("ADDED", owned("m0", "PyTorchJob", "bert"))
    run(c.cycle(now=1.0))
    assert not kube.of("ungate")
    waits = [e[3] for e in kube.of("event") if e[2] == "GPUPoolWaiting"]
    assert any("cannot read its owner PyTorchJob team-a/bert to size its pod group: 403" in w for w in waits)


def test_unbound_group_released_as_one_with_an_event() -> None:
    c, kube = make(group_bind_timeout_seconds=60)
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 1000))
    kube.objects[JOB] = {"spec": {"parallelism": 2}}
    for i in range(2):
        c.on_pod("ADDED", owned(f"w{i}", "Job", "train"))
    run(c.cycle(now=1.0))
    assert len(kube.of("ungate")) == 2
    run(c.cycle(now=100.0))
    released = [e for e in kube.of("event") if e[2] == "GPUPoolGroupReleased"]
    assert sorted(e[1] for e in released) == ["team-a/w0", "team-a/w1"]
    assert "0 of 2 admitted member(s) bound within 60 s" in released[0][3]


def test_a_gang_victim_is_dry_run_first_and_left_whole_when_one_eviction_is_refused() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))
    kube.objects[JOB] = {"spec": {"parallelism": 2}}
    for i in range(2):
        c.on_pod("ADDED", owned(f"w{i}", "Job", "train"))
    run(c.cycle(now=1.0))
    for i in range(2):  # both bound and running
        c.manager.pods[f"uid-w{i}"].gated = False
    kube.dry_refuse.add("w1")  # a PodDisruptionBudget protects w1
    c.on_pod("ADDED", pod("urgent", count=2, priority=100))
    run(c.cycle(now=2.0))
    assert ("dry-evict", "team-a/w0") in kube.calls or ("dry-evict", "team-a/w1") in kube.calls
    assert not kube.of("evict")  # neither member was evicted: the gang stays whole
    kube.dry_refuse.clear()
    c._refused.clear()
    run(c.cycle(now=3.0))
    assert sorted(x[1] for x in kube.of("evict")) == ["team-a/w0", "team-a/w1"]


def test_owner_sizes() -> None:
    assert workloads.size_of("Job", {"spec": {"parallelism": 4, "completions": 2}}) == (2, "spec.parallelism")
    assert workloads.size_of("Job", {"spec": {}}) == (1, "spec.parallelism")
    js = {"spec": {"replicatedJobs": [{"replicas": 2, "template": {"spec": {"parallelism": 3}}},
                                      {"template": {"spec": {}}}]}}  # fmt: skip
    assert workloads.size_of("JobSet", js)[0] == 7
    pt = {"spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 3}}}}
    assert workloads.size_of("PyTorchJob", pt)[0] == 4
    assert workloads.size_of("TrainJob", {"spec": {"trainer": {"numNodes": 8}}})[0] == 8
    parallel = {"spec": {"replicas": 3, "podManagementPolicy": "Parallel"}}
    assert workloads.size_of("StatefulSet", parallel) == (3, "spec.replicas")
    # OrderedReady (the default) creates each pod once the one before runs: its pods stay individual
    assert workloads.size_of("StatefulSet", {"spec": {"replicas": 3}})[0] is None
    lws = pod("lws-0-1")
    lws["metadata"]["labels"] = {workloads.LWS_NAME: "lws", workloads.LWS_GROUP: "0"}
    lws["metadata"]["annotations"][workloads.LWS_SIZE] = "4"
    assert workloads.owner_of(lws) == Owner("LeaderWorkerSet", "lws-0", 4, workloads.LWS_SIZE)
    js_pod = owned("js-0", "Job", "js-workers-0")
    js_pod["metadata"]["labels"] = {workloads.JOBSET_NAME: "js"}
    assert workloads.owner_of(js_pod) == workloads.Ref("team-a", "JobSet", "js")


def test_webhook_refuses_a_pod_that_does_not_match_its_groups_members() -> None:
    from controller import admission

    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))
    ann = {resources.POD_GROUP: "g", resources.MIN_MEMBERS: "2"}
    c.on_pod("ADDED", pod("first", annotations=dict(ann)))
    ok = pod("second", annotations=dict(ann))
    assert admission.group_errors(ok, group_problem=c.group_problem) == []
    errs = admission.group_errors(pod("hi", priority=5, annotations=dict(ann)), group_problem=c.group_problem)
    assert [e.field for e in errs] == ["spec.priorityClassName"]
    assert "member team-a/first of the group has priority 0, this pod 5" in errs[0].message
    other = pod("three", annotations={resources.POD_GROUP: "g", resources.MIN_MEMBERS: "3"})
    errs = admission.group_errors(other, group_problem=c.group_problem)
    assert [e.field for e in errs] == [f"metadata.annotations[{resources.MIN_MEMBERS}]"]
    bad = pod("bad", annotations={resources.POD_GROUP: "g", resources.MIN_MEMBERS: "many"})
    assert any(e.field == f"metadata.annotations[{resources.MIN_MEMBERS}]" for e in admission.validate(bad))


def test_owners_are_read_again_only_while_a_pod_of_theirs_waits_and_forgotten_with_their_pods() -> None:
    """Issue 16: `read_owners` visits owners (indexed by the pods that wait on them), not every owned pod."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 1000))
    kube.objects[JOB] = {"spec": {"parallelism": 2}}
    pods = [owned(f"w{i}", "Job", "train") for i in range(2)]
    for p in pods:
        c.on_pod("ADDED", p)
    run(c.cycle(now=1.0))
    assert kube.reads == [JOB] and len(kube.of("ungate")) == 2
    for p in pods:  # the watch shows them ungated: nothing of the Job waits any more
        c.on_pod("MODIFIED", {**p, "spec": {**p["spec"], "schedulingGates": []}})
    run(c.cycle(now=1000.0))  # the cached read is stale, but no pod waits on it
    assert kube.reads == [JOB]
    for p in pods:
        c.on_pod("DELETED", p)
    assert c._owner_refs == {} and c._ref_users == {} and c._ref_gated == {}
