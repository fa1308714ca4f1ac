"""The node agent's part of a resize (docs/runtime.md, "Resize"), driven by the pod cache.

On every change of the node's pods: a container whose (re-signed, verified) assignment differs from the limits in
its control region gets the region rewritten, which the runtime applies live; and a pending request that lowers
memory gets a report of the memory in use (`gpupool.io/usage`, format `gpupool.resize`) read from the container's
accounting region, which the extender needs before it decides. Without the pool backend the report says the
use is unknown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from deviceplugin.podcache import PodCache, PodEntry
from deviceplugin.runtime_host import RuntimeHost
from gpupool import resize as rz

log = logging.getLogger(__name__)


class ResizeFollower:
    def __init__(
        self,
        node: str,
        cache: PodCache,
        runtime: RuntimeHost | None,
        gpu_index: Callable[[], Mapping[str, int]],
        kube: Any = None,  # deviceplugin.kube.Kube (patch_pod_annotations); None in tests that read `step`'s result
        backend: str = "",
    ) -> None:
        self.node = node
        self.cache = cache
        self.runtime = runtime
        self.gpu_index = gpu_index
        self.kube = kube
        self.backend = backend
        self.clock: Callable[[], float] = time.time
        self.changed = threading.Event()
        self._reported: dict[str, int] = {}  # uid -> seq whose usage was written
        self._followed: dict[str, str] = {}  # uid -> the assignment text its regions were last checked against

    def notify(self) -> None:
        self.changed.set()

    def run(self, stop: threading.Event, period_s: float = 5.0) -> None:
        while not stop.is_set():
            self.changed.wait(period_s)
            self.changed.clear()
            if stop.is_set():
                return
            try:
                self.step()
            except Exception:  # one pod's trouble never stops the follower
                log.exception("resize follower step failed")

    def step(self) -> tuple[list[str], dict[str, str]]:
        """One pass: (containers whose region was rewritten, usage annotations written by pod key)."""
        rewritten: list[str] = []
        reports: dict[str, str] = {}
        index = self.gpu_index()
        live = set()
        for entry in self.cache.entries():
            live.add(entry.uid)
            if entry.problem is not None or entry.assignment is None:
                continue
            if self.runtime is not None and self._followed.get(entry.uid) != entry.text:
                self._followed[entry.uid] = entry.text  # Allocate writes what a later container needs itself
                for key, slices in entry.containers.items():
                    try:
                        if self.runtime.refresh(entry.uid, key, slices, self.node, index):
                            rewritten.append(f"{entry.key}/{key}")
                            what = ", ".join(f"{s.compute}% / {s.memory_mib} MiB on {s.gpu}" for s in slices)
                            log.info("pod %s container %s: control region rewritten for %s", entry.key, key, what)
                    except OSError as exc:
                        self._followed.pop(entry.uid, None)  # tried again on the next pass
                        log.warning("pod %s container %s: cannot rewrite its control region: %s", entry.key, key, exc)
            try:
                report = self._usage_report(entry, index)
            except Exception:  # one pod's object never stops the others
                log.exception("pod %s: reading its resize request failed", entry.key)
                report = None
            if report is not None:
                reports[entry.key] = report
        for uid in set(self._reported) - live:
            del self._reported[uid]
        for uid in set(self._followed) - live:
            del self._followed[uid]
        return rewritten, reports

    def _usage_report(self, entry: PodEntry, index: Mapping[str, int]) -> str | None:
        assert entry.assignment is not None
        p = rz.pending(entry.pod, entry.assignment.slices)
        if p is None or p.problem is not None or not p.shrinks_memory:
            return None
        usage = rz.usage_of(entry.pod)
        seq = p.request.seq
        if (usage is not None and usage.seq == seq) or self._reported.get(entry.uid) == seq:
            return None
        used: dict[str, dict[str, int]] | None = None
        unknown = ""
        if self.runtime is None:
            unknown = f"the node agent runs the {self.backend or 'non-pool'} backend, which reports no memory use"
        else:
            used = {}
            for key, slices in entry.containers.items():
                figures = self.runtime.memory_used(entry.uid, key, slices, self.node, index)
                if figures is None:
                    used, unknown = None, f"container {key} has no runtime region on node {self.node}"
                    break
                used[key] = figures
        value = rz.usage_annotation(seq, used, unknown, self.clock())
        if self.kube is not None:
            try:
                self.kube.patch_pod_annotations(entry.namespace, entry.name, {rz.USAGE: value})
            except Exception as exc:
                log.warning("pod %s: cannot write its memory use for resize #%d: %s", entry.key, seq, exc)
                return None
        self._reported[entry.uid] = seq
        return value
