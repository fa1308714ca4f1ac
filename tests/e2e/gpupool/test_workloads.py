"""Workloads end to end (docs/workloads.md): Jobs run by the real Job controller of the control plane's
kube-controller-manager are admitted as pod groups, whole or not at all; a gang is preempted whole for a
higher-priority gang; a Deployment's pods stay individual under quota.

The pool here is the eight T4 GPUs of the two kwok T4 nodes (pods pin themselves with gpupool.io/gpu-model);
kwok completes a Job's pods as soon as they run, so a Job finishes once its pods are admitted and bound.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from e2e.polling import wait_for
from gpupool import objects, resources
from tests.e2e.gpupool.gp_helpers import DEBUG_POOL, GP, HIGH, KWOK_NODES, LOW, gated, gpu_pod

pytestmark = [
    pytest.mark.workloads,
    pytest.mark.local_harness(f"{KWOK_NODES}: the T4 nodes are the pool; and {DEBUG_POOL}"),
]

T4 = {resources.GPU_MODEL: "T4-16GB"}


def job(name: str, pods: int, *, gpus: int = 1, priority_class: str | None = None) -> dict[str, Any]:
    template = gpu_pod(name, gpus=gpus, annotations=T4, priority_class=priority_class)
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"parallelism": pods, "completions": pods, "backoffLimit": 0,
                 "template": {"metadata": {"annotations": dict(T4)}, "spec": template["spec"]}},
    }  # fmt: skip


def job_pods(gp: GP, ns: str, name: str) -> list[Any]:
    return list(gp.v1.list_namespaced_pod(ns, label_selector=f"job-name={name}").items)


def admitted_at(p: Any) -> str | None:
    """The `gpupool.io/Admission` condition's transition time once True (one per admission cycle)."""
    for c in p.status.conditions or []:
        if c.type == objects.ADMISSION_CONDITION and c.status == "True":
            return str(c.last_transition_time)
    return None


def wait_complete(batch: Any, ns: str, name: str, pods: int, timeout: float = 90) -> None:
    wait_for(lambda: (batch.read_namespaced_job_status(name, ns).status.succeeded or 0) >= pods,
             timeout=timeout, what=f"Job {ns}/{name} complete")  # fmt: skip


def one_cycle(gp: GP, ns: str, name: str, pods: int) -> None:
    """Every pod of the Job was admitted in one cycle (the same transition time): as one group."""
    seen = job_pods(gp, ns, name)
    assert len(seen) == pods
    times = {admitted_at(p) for p in seen}
    assert len(times) == 1 and None not in times, (name, times)


def test_job_of_four_admitted_whole_or_not_at_all(gp: GP) -> None:
    batch = client.BatchV1Api(gp.v1.api_client)
    ns = gp.namespace()
    gp.create(ns, gpu_pod("block-4", gpus=4, annotations=T4))
    gp.create(ns, gpu_pod("block-1", gpus=1, annotations=T4))
    gp.wait_bound(ns, "block-4")
    gp.wait_bound(ns, "block-1")  # three T4 GPUs are left: the Job of four must not start at all
    batch.create_namespaced_job(ns, job("train", 4))
    gp.extra.append(lambda: batch.delete_namespaced_job("train", ns, propagation_policy="Background"))
    wait_for(lambda: len(job_pods(gp, ns, "train")) == 4, timeout=30, what="the Job controller's four pods")
    for p in job_pods(gp, ns, "train"):
        gp.stays_gated(ns, p.metadata.name, 1.0)
    name = job_pods(gp, ns, "train")[0].metadata.name
    wait_for(lambda: any("no place for all 4 member(s) together" in e for e in gp.events(ns, name)),
             timeout=15, what="the group's wait reason")  # fmt: skip
    gp.delete(ns, "block-1")
    wait_complete(batch, ns, "train", 4)
    one_cycle(gp, ns, "train", 4)


def test_two_four_pod_jobs_on_six_gpus_both_finish_in_turn(gp: GP) -> None:
    batch = client.BatchV1Api(gp.v1.api_client)
    ns = gp.namespace()
    gp.create(ns, gpu_pod("block-2", gpus=2, annotations=T4))
    gp.wait_bound(ns, "block-2")  # six T4 GPUs left: pod by pod, two Jobs of four could hold three each
    for name in ("a", "b"):
        batch.create_namespaced_job(ns, job(name, 4))
        gp.extra.append(lambda name=name: batch.delete_namespaced_job(name, ns, propagation_policy="Background"))
    wait_complete(batch, ns, "a", 4)
    wait_complete(batch, ns, "b", 4)
    one_cycle(gp, ns, "a", 4)
    one_cycle(gp, ns, "b", 4)


def test_a_whole_gang_is_preempted_for_a_higher_priority_gang(gp: GP) -> None:
    batch = client.BatchV1Api(gp.v1.api_client)
    ns = gp.namespace()
    group = {**T4, resources.POD_GROUP: "low", resources.MIN_MEMBERS: "2"}
    for i in range(2):
        gp.create(ns, gpu_pod(f"low-{i}", gpus=4, annotations=group, priority_class=LOW))
    for i in range(2):
        gp.wait_bound(ns, f"low-{i}")
    batch.create_namespaced_job(ns, job("urgent", 2, gpus=4, priority_class=HIGH))
    gp.extra.append(lambda: batch.delete_namespaced_job("urgent", ns, propagation_policy="Background"))
    for i in range(2):
        gp.wait_gone(ns, f"low-{i}", timeout=60)  # both members go: the gang is preempted whole
    wait_complete(batch, ns, "urgent", 2)
    one_cycle(gp, ns, "urgent", 2)


def test_deployment_scaled_up_and_down_under_quota(gp: GP) -> None:
    apps = client.AppsV1Api(gp.v1.api_client)
    ns = gp.namespace()
    gp.queue("deploy", {"namespaces": [ns], "nominalQuota": {"compute": 200}})
    template = gpu_pod("web", gpus=1, annotations=T4)
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}, "annotations": dict(T4)},
                              "spec": template["spec"]}},
    }  # fmt: skip
    apps.create_namespaced_deployment(ns, body)
    gp.extra.append(lambda: apps.delete_namespaced_deployment("web", ns, propagation_policy="Background"))

    def pods() -> list[Any]:
        return [p for p in gp.v1.list_namespaced_pod(ns, label_selector="app=web").items
                if p.metadata.deletion_timestamp is None]  # fmt: skip

    def running() -> int:
        return sum(1 for p in pods() if not gated(p) and p.spec.node_name)

    wait_for(lambda: len(pods()) == 3 and running() == 2, timeout=60, what="two of three replicas admitted")
    assert sum(1 for p in pods() if gated(p)) == 1  # the third waits for quota: the pods stay individual
    apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 1}})
    wait_for(lambda: len(pods()) == 1 and running() == 1, timeout=60, what="scaled down to one")
    apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 2}})
    wait_for(lambda: len(pods()) == 2 and running() == 2, timeout=60, what="scaled up to two, both admitted")
