"""The extender's part of a resize (docs/runtime.md, "Resize"): a reaction to pod watch events.

The extender owns the ledger and binds, so it is where a resize is planned: under the same lock as a bind's
commit (`PoolService.lock`), the ledger holds the envelope of the old and new slices (`gpupool.resize.
hold_envelope`) while the re-signed assignment is written; the watch then brings the new assignment back and
the ledger holds exactly it. The decision is `gpupool.resize`; this module reads pods and writes one JSON patch
that lands only on the pod as decided (its `resourceVersion`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from extender.kube import ApiError
from extender.service import PoolService
from gpupool import objects, resources
from gpupool import resize as rz
from gpupool.errors import AssignmentError, OverAllocation
from gpupool.quota import Resources
from kubeio.client import MERGE_PATCH

log = logging.getLogger(__name__)


class Resizer:
    """Wraps the service's pod watch callbacks: the service sees every event first, then pending requests run."""

    def __init__(self, service: PoolService) -> None:
        self.service = service
        #: pods whose re-signed assignment is written: uid -> its text; the ledger holds their envelope until
        #: the watch shows that text (so a lagging event never re-holds the old slices meanwhile)
        self.writing: dict[str, str] = {}

    # --- watch callbacks -------------------------------------------------------------------------------------

    def on_pod_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        pods = [dict(p) for p in items]
        self.service.on_pod_list(pods)
        live = {objects.pod_uid(p): p for p in pods}
        for uid in list(self.writing):
            self._settle(uid, live.get(uid))
        for pod in pods:
            self.handle(pod)

    def on_pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        self.service.on_pod_event(kind, pod)
        uid = objects.pod_uid(pod)
        if uid in self.writing:
            self._settle(uid, None if kind == "DELETED" else pod)
        if kind != "DELETED":
            self.handle(pod)

    def _settle(self, uid: str, pod: Mapping[str, Any] | None) -> None:
        """The watch shows the written assignment (or the pod left): the ledger follows the pod again."""
        s = self.service
        gone = pod is None or objects.pod_is_terminal(pod)
        if not gone and objects.pod_assignment_text(pod or {}) != self.writing[uid]:
            return
        with s.lock:
            self.writing.pop(uid, None)
            s.inflight.pop(uid, None)
            s._gone_while_binding.discard(uid)
            cached = s.pods.get(uid)
            if gone or cached is None:
                s.ledger.discard(uid)
            else:
                s._sync_holding(uid, cached)

    # --- the decision ----------------------------------------------------------------------------------------

    def handle(self, pod: Mapping[str, Any]) -> str | None:
        """Act on the pod's pending request if it is the extender's turn; returns the state written, if any.
        One pod's object never stops the pods watcher: whatever it provokes is logged."""
        try:
            return self._handle(pod)
        except Exception:
            log.exception("resize of pod %s failed", objects.pod_key(pod) if isinstance(pod, Mapping) else "?")
            return None

    def _handle(self, pod: Mapping[str, Any]) -> str | None:
        if resources.RESIZE not in ((pod.get("metadata") or {}).get("annotations") or {}):
            return None
        if objects.pod_is_terminal(pod) or not objects.pod_uid(pod):
            return None
        s = self.service
        uid = objects.pod_uid(pod)
        try:
            assignment = objects.pod_assignment(pod, s.key)
            untrusted = ""
        except AssignmentError as exc:
            assignment, untrusted = None, str(exc)
        p = rz.pending(pod, assignment.slices if assignment is not None else None)
        if p is None or uid in self.writing:
            return None
        if untrusted:
            return self._refuse(pod, p.request, f"the pod's assignment cannot be trusted ({untrusted})")
        if p.problem is not None:
            return self._refuse(pod, p.request, p.problem)
        if p.growth != Resources(0, 0) and not p.approved:
            return None  # the controller checks the quota of a growth first (gpupool.resize, docs/runtime.md)
        usage = rz.usage_of(pod)
        if p.shrinks_memory and (usage is None or usage.seq != p.request.seq):
            return None  # the node agent reports the memory in use first
        problem, note = rz.usage_problem(p, usage)
        if problem is not None:
            return self._refuse(pod, p.request, problem)
        assert assignment is not None
        with s.lock:
            if uid in s.inflight:
                return None  # a bind or an earlier resize of this pod is being written
            held = s.ledger.holding(uid)
            wanted = objects.holding_from_pod(pod, s.key)
            if held is None or wanted is None or held != wanted:
                problem = "the ledger does not hold this pod's assignment (quarantined, or the watch lags); try again"
            else:
                try:
                    envelope = rz.hold_envelope(s.ledger, held, p.new)
                except OverAllocation as exc:
                    problem = f"no room to grow: {exc}"
                else:
                    s.inflight[uid] = envelope
        if problem is not None:
            return self._refuse(pod, p.request, problem)
        text = rz.reissued(assignment, p).signed(s.key).to_annotation()
        message = rz.applied_message(p) + note
        status = rz.status_annotation(pod, rz.outcome(p.request, rz.State.APPLIED, message, s.clock()))
        self.writing[uid] = text
        try:
            self._patch(pod, {resources.ASSIGNMENT: text, rz.STATUS: status})
        except Exception as exc:  # nothing landed: the ledger follows the pod's (old) assignment again
            log.warning("resize of pod %s: writing the new assignment failed: %s", objects.pod_key(pod), exc)
            with s.lock:
                self.writing.pop(uid, None)
                s.inflight.pop(uid, None)
                cached = s.pods.get(uid)
                if cached is not None:
                    s._sync_holding(uid, cached)
                else:
                    s.ledger.discard(uid)
            return None
        log.info("resized pod %s: %s", objects.pod_key(pod), message)
        return rz.State.APPLIED.value

    def _refuse(self, pod: Mapping[str, Any], request: rz.ResizeRequest, why: str) -> str | None:
        value = rz.status_annotation(pod, rz.outcome(request, rz.State.REFUSED, why, self.service.clock()))
        try:
            self._patch(pod, {rz.STATUS: value})
        except Exception as exc:
            log.warning("resize of pod %s: writing the refusal failed: %s", objects.pod_key(pod), exc)
            return None
        log.info("resize of pod %s refused: %s", objects.pod_key(pod), why)
        return rz.State.REFUSED.value

    def _patch(self, pod: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
        """A merge patch that lands only on the pod as decided (its resourceVersion): a request rewritten meanwhile,
        or any other change, answers 409 and the next watch event decides again."""
        api = self.service.api
        if api is None:
            raise ApiError(0, "the extender has no API-server connection")
        meta = pod.get("metadata") or {}
        body: dict[str, Any] = {"metadata": {"annotations": dict(annotations)}}
        if meta.get("resourceVersion"):
            body["metadata"]["resourceVersion"] = meta["resourceVersion"]
        api.patch_pod(str(meta.get("namespace") or ""), str(meta.get("name") or ""), body, MERGE_PATCH)
