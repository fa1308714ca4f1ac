"""kopf runs the sync watch handlers in worker threads while the admission cycle runs on the event loop.

The Controller serialises them (`Controller.lock`); this test drives both at once, with the interpreter
switching threads as often as it can, and checks that neither side raises and that the quota and the GPUs are
never exceeded. It fails (a RuntimeError from a dict changed during iteration, or an over-admission) when the
handlers mutate the QueueManager without the lock.
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

    def churn() -> None:
        try:
            rounds = 0
            while not stop.is_set() and rounds < 400:
                for p in pods[rounds % 3::3]:
                    handlers.pod_event({"type": "ADDED"}, p)
                for p in pods[(rounds + 1) % 3::3]:
                    handlers.pod_event({"type": "DELETED"}, p)
                handlers.gpunode_event({"type": "MODIFIED"}, gpunode("n1", gpus=4 - rounds % 2))
                rounds += 1
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
