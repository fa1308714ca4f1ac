"""The watch handlers and the admission cycle change and read one model; other threads may read it meanwhile.

Every watch runs on a thread of its own (`Controller.on_pod_event` / `on_pod_list` for pods, `on_watch_event` /
`on_list` for the other kinds; `controller.handlers.watches`), the admission cycle on the operator's loop, and the
Controller serialises every thread that touches the model (`Controller.lock`); this test drives the watches' calls
from another thread while the cycle runs, with the interpreter switching threads as often as it can, and checks
that neither side raises and that the quota and the GPUs are never exceeded. It fails (a RuntimeError from a dict
changed during iteration, or an over-admission) when the handlers mutate the QueueManager without the lock.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from types import SimpleNamespace
from typing import Any

from controller import handlers
from controller.runtime import WATCHED
from tests.controller.test_runtime import gpunode, make, pod, queue


def test_watch_handlers_in_threads_never_race_the_admission_cycle(monkeypatch: Any) -> None:
    c, _ = make(admission_interval_seconds=3600)
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 200))
    monkeypatch.setattr(handlers, "STATE", c)
    stop = threading.Event()
    errors: list[BaseException] = []
    pods = [pod(f"p{i}") for i in range(60)]

    async def events() -> None:
        rounds = 0
        while not stop.is_set() and rounds < 400:
            for p in pods[rounds % 3 :: 3]:
                c.on_pod_event("ADDED", p)
            for p in pods[(rounds + 1) % 3 :: 3]:
                c.on_pod_event("DELETED", p)
            if rounds % 10 == 9:  # a relist: the pods of one third, the others forgotten
                c.on_pod_list(pods[rounds % 3 :: 3])
            c.on_watch_event("gpunodes", "MODIFIED", gpunode("n1", gpus=4 - rounds % 2))
            if rounds % 25 == 24:  # a relist of the GPUNodes and of the queues
                c.on_list("gpunodes", [gpunode("n1", gpus=4)])
                c.on_list("gpuqueues", [queue("team-a", 200)])
            await asyncio.sleep(0)
            rounds += 1

    def churn() -> None:
        try:
            asyncio.run(events())
        except BaseException as exc:  # reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=churn)
    try:
        worker.start()

        async def cycles() -> None:
            while worker.is_alive():
                await c.cycle()
                with c.lock:
                    usage = c.manager.usage("team-a")
                    assert usage.compute <= 200, usage
                await asyncio.sleep(0)

        asyncio.run(cycles())
    finally:
        stop.set()
        worker.join(30)
        sys.setswitchinterval(old)
    assert not errors, errors


def test_kopf_watches_nothing_every_kind_is_a_reflector_that_relists() -> None:
    """kopf runs the startup and cleanup hooks and nothing else: it keeps no state on the objects (no annotation,
    no finalizer: every pod event would cost a write), and it watches no kind, because its re-list after a broken
    watch only adds and updates (a GPUQueue deleted meanwhile kept admitting). Every kind is a `Reflector` whose
    list replaces what the controller holds; the webhooks are served by `controller.webhook_server`."""
    from kopf._core.intents import registries

    registry = registries.get_default_registry()
    assert registry._changing.get_all_handlers() == [] and registry._spawning.get_all_handlers() == []
    assert registry._webhooks.get_all_handlers() == [] and registry._watching.get_all_handlers() == []
    c, _ = make()
    kube = SimpleNamespace(raw=object(), listed_at={"/api/v1/nodes": "42"})
    reflectors = handlers.watches(kube, c)  # type: ignore[arg-type]
    assert sorted(r.path for r in reflectors) == sorted(["/api/v1/pods", *handlers.WATCH_PATHS])
    assert sorted(handlers.WATCH_PATHS.values()) == sorted(WATCHED)
    assert {r.path: r.since for r in reflectors}["/api/v1/nodes"] == "42"  # from the startup list, not a new one
