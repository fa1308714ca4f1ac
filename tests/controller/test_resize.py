"""Resize at the controller: admission of the request, the quota of a growth (approve or refuse), outcome Events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller import admission
from gpupool import assignment, resources
from gpupool import resize as rz
from gpupool.quota import Resources
from tests.controller.test_admission import LIMITS, USER, make_pod
from tests.controller.test_runtime import KEY, gpunode, make, pod, queue, run

F = f"metadata.annotations[{resources.RESIZE}]"


def running(p: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(p))
    out["metadata"]["annotations"][resources.ASSIGNMENT] = "{}"  # admission only checks that one is there
    out["spec"]["nodeName"] = "n1"
    return out


def with_request(p: dict[str, Any], **request: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(p))
    out["metadata"]["annotations"][resources.RESIZE] = json.dumps({"seq": 1, "container": "main", **request})
    return out


def check(new: dict[str, Any], old: dict[str, Any] | None, operation: str = "UPDATE") -> list[str]:
    return [str(e) for e in admission.validate(new, old=old, operation=operation, userinfo=USER, limits=LIMITS)]


def test_a_sensible_request_on_a_running_pod_is_admitted() -> None:
    old = running(make_pod())
    assert check(with_request(old, compute=60, memory=8192), old) == []


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        ({"compute": 0}, f"{F}.compute", "from 1 to 100"),
        ({"compute": 250}, f"{F}.compute", "from 1 to 100"),
        ({"memory": 90000}, f"{F}.memory", "largest GPU in the pool (81920 MiB)"),
        ({"memory": -1}, f"{F}.memory", "from 1"),
        ({"container": "other", "compute": 50}, f"{F}.container", "no app container 'other'; write one of main"),
        ({}, F, "asks for nothing"),
    ],
)
def test_absurd_requests_are_refused_naming_the_field(request_: dict[str, Any], field: str, words: str) -> None:
    old = running(make_pod())
    errors = check(with_request(old, **request_), old)
    assert any(e.startswith(field + ":") and words in e for e in errors), errors


def test_a_request_must_follow_the_last_one_and_needs_a_running_pod() -> None:
    old = with_request(running(make_pod()), compute=50)
    again = with_request(old, compute=60)  # seq 1 again
    assert any("seq: must be larger than the last request's (1); write 2" in e for e in check(again, old))
    gated = make_pod()
    assert any("not bound" in e for e in check(with_request(gated, compute=60), gated))
    assert any("resizes a running pod" in e for e in check(with_request(gated, compute=60), None, "CREATE"))


def test_users_cannot_write_what_gpupool_writes_back() -> None:
    old = running(make_pod())
    for key in (resources.RESIZE_STATUS, resources.USAGE):
        new = json.loads(json.dumps(old))
        new["metadata"]["annotations"][key] = "{}"
        assert any(f"metadata.annotations[{key}]: is written by gpupool only" in e for e in check(new, old))


def test_an_unchanged_request_does_not_block_other_updates() -> None:
    old = with_request(running(make_pod()), compute=60)
    new = json.loads(json.dumps(old))
    new["metadata"]["labels"] = {"x": "y"}
    assert check(new, old) == []


# --- the controller: quota of a growth ----------------------------------------------------------------------


def bound_at(name: str, compute: int, ns: str = "team-a") -> dict[str, Any]:
    p = pod(name, ns=ns, gated=False)
    record = assignment.Assignment(
        pod=f"uid-{name}", node="n1",
        slices=(assignment.SliceRecord(0, "GPU-n1-0", "n1", compute, 4096, "gpu0-0"),), at="2025-01-01T00:00:00Z",
    ).signed(KEY)  # fmt: skip
    p["metadata"]["annotations"][resources.ASSIGNMENT] = record.to_annotation()
    p["metadata"]["annotations"][resources.QUEUE] = ns
    p["spec"]["nodeName"] = "n1"
    p["status"]["phase"] = "Running"
    return p


def test_a_growth_within_quota_is_approved_and_charged_at_once() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 100))
    p = bound_at("a", 30)
    p["metadata"]["annotations"][rz.REQUEST] = json.dumps({"seq": 1, "container": "c", "compute": 60})
    c.on_pod("ADDED", p)
    assert c.manager.usage("team-a").compute == 30
    run(c.cycle(now=2e9))
    (_, key, annotations), = kube.of("annotate")  # fmt: skip
    history = json.loads(annotations[rz.STATUS])["history"]
    assert key == "team-a/a" and history[-1]["state"] == "Approved" and "+30% / +0 MiB" in history[-1]["message"]
    assert c.manager.usage("team-a").compute == 60  # reserved before anything else is admitted
    run(c.cycle(now=2e9 + 1))
    assert len(kube.of("annotate")) == 1  # approved once


def test_a_growth_past_quota_is_refused_with_the_quota_figures_and_an_event() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 50))
    p = bound_at("a", 30)
    p["metadata"]["annotations"][rz.REQUEST] = json.dumps({"seq": 1, "container": "c", "compute": 60})
    c.on_pod("ADDED", p)
    run(c.cycle(now=2e9))
    (_, _, annotations), = kube.of("annotate")  # fmt: skip
    last = json.loads(annotations[rz.STATUS])["history"][-1]
    assert last["state"] == "Refused" and last["message"].startswith("quota: ")
    assert "50" in last["message"]
    assert c.manager.usage("team-a") == Resources(30, 4096)
    events = [e for e in kube.of("event") if e[2] == "GPUPoolResizeRefused"]
    assert len(events) == 1 and events[0][3].startswith("resize #1: quota: ")


def test_a_shrink_needs_no_quota_and_an_applied_outcome_is_announced_once() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 30))
    p = bound_at("a", 30)
    p["metadata"]["annotations"][rz.REQUEST] = json.dumps({"seq": 1, "container": "c", "compute": 10})
    c.on_pod("ADDED", p)
    run(c.cycle(now=2e9))
    assert kube.of("annotate") == []  # the extender decides a shrink alone
    done = rz.status_annotation(p, rz.outcome(rz.ResizeRequest(1, "c", 10, None), rz.State.APPLIED, "ok", 2e9))
    p["metadata"]["annotations"][rz.STATUS] = done
    c.on_pod("MODIFIED", p)
    run(c.cycle(now=2e9 + 1))
    run(c.cycle(now=2e9 + 2))
    assert [e[3] for e in kube.of("event") if e[2] == "GPUPoolResized"] == ["resize #1: ok"]


def test_explain_shows_the_resize_history() -> None:
    from controller.cli import explain_lines

    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    p = bound_at("a", 30)
    p["metadata"]["annotations"][rz.STATUS] = rz.status_annotation(
        p, rz.outcome(rz.ResizeRequest(1, "c", 60, 8192), rz.State.APPLIED, "container 'c': 30% -> 60%", 1.8e9))
    c.on_pod("ADDED", p)
    lines = explain_lines(c, "team-a", "a", what_if=False)
    assert "resize history (newest last):" in lines
    assert "  #1 Applied at 2027-01-15T08:00:00Z: container 'c': 30% -> 60%" in lines


def test_a_pending_growth_wakes_the_cycle() -> None:
    c, _ = make()
    woken: list[int] = []
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))  # (new capacity wakes it too: docs/fairshare.md)
    c.wake = lambda: woken.append(1)
    p = bound_at("a", 30)
    c.on_pod("ADDED", p)
    assert woken == []
    p["metadata"]["annotations"][rz.REQUEST] = json.dumps({"seq": 1, "container": "c", "compute": 60})
    c.on_pod("MODIFIED", p)
    assert woken == [1]
    p["metadata"]["annotations"][rz.REQUEST] = json.dumps({"seq": 2, "container": "c", "compute": 10})
    c.on_pod("MODIFIED", p)  # a shrink is the extender's alone
    assert woken == [1]


def test_the_cycle_loop_runs_again_when_woken() -> None:
    import asyncio

    c, _ = make(admission_interval_seconds=3600.0)
    cycles: list[int] = []

    async def cycle(now: float | None = None, *, trail: bool = False) -> dict[str, int]:
        cycles.append(1)
        return {}

    c.cycle = cycle  # type: ignore[method-assign]

    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(c.run_cycles(stop))
        while len(cycles) < 1:
            await asyncio.sleep(0.01)
        assert c.wake is not None
        c.wake()
        async with asyncio.timeout(60):  # far below the hour-long interval: only the wake can run it again
            while len(cycles) < 2:
                await asyncio.sleep(0.01)
        stop.set()
        await task
        return len(cycles)

    assert run(scenario()) >= 2
