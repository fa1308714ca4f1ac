"""The watch handlers and the admission cycle change and read one model; other threads may read it meanwhile.

kopf runs the watch handlers (coroutines since issue 16) on the loop of the admission cycle, the pod watch runs on
a thread of its own (`Controller.on_pod_event`, `on_pod_list`: session 10), and the Controller serialises every
thread that touches the model (`Controller.lock`); this test drives the handlers and the pod watch's calls from
another thread (and loop) while the cycle runs, with the interpreter switching threads as often as it can, and checks
that neither side raises and that the quota and the GPUs are never exceeded. It fails (a RuntimeError from a dict
changed during iteration, or an over-admission) when the handlers mutate the QueueManager without the lock.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

from controller import handlers
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
            for p in pods[rounds % 3::3]:
                c.on_pod_event("ADDED", p)
            for p in pods[(rounds + 1) % 3::3]:
                c.on_pod_event("DELETED", p)
            if rounds % 10 == 9:  # a relist: the pods of one third, the others forgotten
                c.on_pod_list(pods[rounds % 3::3])
            node = gpunode("n1", gpus=4 - rounds % 2)
            await handlers.gpunode_event({"type": "MODIFIED", "object": node}, node)
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


def test_kopf_calls_only_event_handlers_so_no_diff_base_is_kept() -> None:
    """`handlers.EventsOnly` gives kopf no diff base: right only while no change handler (on.create, on.update,
    on.delete, on.field, daemons, timers) is registered, and kopf keeps no state on the objects (no annotation,
    no finalizer: every pod event would cost a write). The webhooks are served by `controller.webhook_server`."""
    from kopf._core.intents import registries

    registry = registries.get_default_registry()
    assert registry._changing.get_all_handlers() == [] and registry._spawning.get_all_handlers() == []
    assert registry._webhooks.get_all_handlers() == []
    watched = {h.fn for h in registry._watching.get_all_handlers()}
    assert watched == {handlers.gpunode_event, handlers.gpuqueue_event, handlers.node_event,
                       handlers.namespace_event}  # pods: the pod watch's thread (`controller.handlers.startup`)
    essence = handlers.EventsOnly().build(body={"metadata": {"name": "p"}, "spec": {"x": 1}})  # type: ignore[arg-type]
    assert essence == {}
