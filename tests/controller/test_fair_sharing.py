"""Fair sharing and the event-driven admission cycle against a real kube-apiserver (marker `workloads`).

One control plane for the module (tests/controller/real_api.py: etcd + kube-apiserver + KCM, no kwok): one
8-GPU GPUNode, and `gpupool-controller` as a process whose backstop timer is an hour
(`GPUPOOL_ADMISSION_INTERVAL_SECONDS=3600`), so every admission here comes from an event: a pod added, a pod
deleted, a GPUQueue created. Pods are only admitted (gate removed), never bound: the RESERVED holdings of the
admitted pods fill the pool, which is all the queue decisions need.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.polling import wait_for
from gpupool.objects import pod_gated
from tests.controller.real_api import ControllerProcess, RealAPI, gpu_pod, wait_webhook_serving

pytestmark = pytest.mark.workloads

GPUS = 8
WEIGHTS = {"a": 1, "b": 1, "c": 2}


@pytest.fixture(scope="module")
def real(request: pytest.FixtureRequest) -> Iterator[RealAPI]:
    from tests.controller.real_api import skip_without_binaries

    skip_without_binaries()
    api = RealAPI.start("fair")
    failed_before = request.session.testsfailed
    try:
        api.service_account("gpupool-controller")
        api.gpu_node("fair-0", gpus=GPUS, memory_mib=16384)
        yield api
    finally:
        api.down(failed=request.session.testsfailed > failed_before)


@pytest.fixture(scope="module")
def controller(real: RealAPI) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(real, "ctl-fair", env={"GPUPOOL_ADMISSION_INTERVAL_SECONDS": "3600"}).start()
    ctl.install_webhooks()
    probe = real.namespace("probe")
    wait_webhook_serving(real, probe, lambda n: real.create_pod(probe, gpu_pod(n, compute=1, memory=1)))
    yield ctl
    ctl.stop()


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    before = request.session.testsfailed
    yield
    if request.session.testsfailed > before and "real" in request.fixturenames:
        api: RealAPI = request.getfixturevalue("real")
        print(api.cluster.log_tails(80, ["ctl-fair"]))


def create_queue(real: RealAPI, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUQueue", "metadata": {"name": name}, "spec": spec}
    real.custom.create_cluster_custom_object("gpupool.io", "v1alpha1", "gpuqueues", body)


def queue_status(real: RealAPI, name: str) -> dict[str, Any]:
    obj = real.custom.get_cluster_custom_object("gpupool.io", "v1alpha1", "gpuqueues", name)
    return dict(obj.get("status") or {})


def admitted(real: RealAPI, ns: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in real.pods(ns) if not pod_gated(p))


def whole_gpu(name: str) -> dict[str, Any]:
    return gpu_pod(name, compute=100, memory=1024)


def test_events_admit_without_the_timer(real: RealAPI, controller: ControllerProcess) -> None:
    """The timer would take an hour: a new pod and a freed slice are admitted on their events."""
    ns = real.namespace("ev")
    create_queue(real, f"ev-{secrets.token_hex(2)}", {"namespaces": [ns], "nominalQuota": {"compute": 100}})
    real.create_pod(ns, whole_gpu("first"))
    wait_for(lambda: admitted(real, ns) == ["first"], 30, "the first pod admitted on its add event", 0.1)
    real.create_pod(ns, whole_gpu("second"))
    wait_for(lambda: any(e.get("reason") == "GPUPoolWaiting" for e in real.events(ns, "second")), 30,
             "the second pod told why it waits (quota 100/100)", 0.1)  # fmt: skip
    real.delete_pod(ns, "first", wait=False)
    wait_for(lambda: admitted(real, ns) == ["second"], 30, "the second pod admitted once the first is gone", 0.1)
    real.delete_pod(ns, "second")


def test_three_queues_weighted_1_1_2_share_25_25_50(real: RealAPI, controller: ControllerProcess) -> None:
    """Queues a, b, c (weights 1:1:2, no quota of their own) borrow from an idle lender that holds the cohort's
    quota, the size of the pool. 6 pods each wait first; once the lender exists they are admitted by fair
    share, and when c gives a pod back, c (below its fair share) gets the next admission though a's and b's
    waiting pods are older."""
    tag = secrets.token_hex(2)
    cohort = f"fair-{tag}"
    spaces = {q: real.namespace(q) for q in WEIGHTS}
    names = {q: f"{q}-{tag}" for q in WEIGHTS}
    for q, weight in WEIGHTS.items():
        create_queue(real, names[q], {"namespaces": [spaces[q]], "cohort": cohort, "nominalQuota": {"compute": 0},
                                      "fairSharing": {"weight": weight}})  # fmt: skip
    for i in range(6):
        for q in WEIGHTS:
            real.create_pod(spaces[q], whole_gpu(f"{q}-{i:02d}"))
    wait_for(lambda: all(queue_status(real, names[q]).get("pending") == 6 for q in WEIGHTS), 60,
             "18 pods waiting (the cohort has no quota yet)", 0.2)  # fmt: skip
    create_queue(real, f"lender-{tag}", {"namespaces": [real.namespace("lender")], "cohort": cohort,
                                         "nominalQuota": {"compute": GPUS * 100}})  # fmt: skip

    def held() -> dict[str, int] | None:
        counts = {q: len(admitted(real, spaces[q])) for q in WEIGHTS}
        return counts if sum(counts.values()) == GPUS else None

    counts = wait_for(held, 60, f"{GPUS} pods admitted", 0.2)
    shares = {q: 100 * n / GPUS for q, n in counts.items()}
    for q, want in {"a": 25, "b": 25, "c": 50}.items():
        assert abs(shares[q] - want) <= 5, shares
    # what `kubectl get gpuqueues` shows: Share and Fair Share columns
    wait_for(lambda: all(queue_status(real, names[q]).get("sharePercent") == round(shares[q]) for q in WEIGHTS),
             30, "the share in each queue's status", 0.2)  # fmt: skip
    assert {q: queue_status(real, names[q])["fairSharePercent"] for q in WEIGHTS} == {"a": 25, "b": 25, "c": 50}
    printed = real.cluster.kubectl("get", "gpuqueues", names["c"]).stdout
    assert "SHARE" in printed and "FAIR SHARE" in printed, printed
    # c gives one pod back: c is now below its fair share, so its next pod goes first
    real.delete_pod(spaces["c"], admitted(real, spaces["c"])[0], wait=False)
    wait_for(lambda: (held() or {}).get("c") == counts["c"], 30, "c's next pod admitted in the freed slot", 0.2)
    assert {q: len(admitted(real, spaces[q])) for q in WEIGHTS} == counts
    for q in WEIGHTS:
        real.core.delete_collection_namespaced_pod(spaces[q], grace_period_seconds=0)
