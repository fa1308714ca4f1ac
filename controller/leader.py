"""Exactly one active controller: a coordination.k8s.io Lease (decision pure, I/O thin).

Every replica serves the admission webhooks and keeps its cache warm from watches (a hot standby);
only the Lease holder runs the admission cycle, preemption, status and garbage collection. A standby
takes over once the holder stops renewing for `lease_duration` seconds. We use a Lease rather than
kopf peering because peering freezes every replica when priorities tie, and a Deployment's replicas
cannot be given distinct priorities without extra machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpupool.timefmt import format_time, parse_time

log = logging.getLogger("gpupool.controller.leader")


def may_hold(spec: Mapping[str, Any] | None, identity: str, now: float, default_duration: float) -> bool:
    """May `identity` hold (take or renew) a Lease with this spec at `now`?"""
    if not spec:
        return True
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return renewed is None or now - renewed > duration


def lease_spec(old: Mapping[str, Any] | None, identity: str, now: float, duration: float) -> dict[str, Any]:
    old = old or {}
    taking = old.get("holderIdentity") != identity
    stamp = format_time(now, micro=True)  # Lease times are MicroTime
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(duration),
        "acquireTime": stamp if taking else old.get("acquireTime") or stamp,
        "renewTime": stamp,
        "leaseTransitions": int(old.get("leaseTransitions") or 0) + (1 if taking and old.get("holderIdentity") else 0),
    }


class LeaseElector:
    """Holds the Lease while it can; `is_leader` says whether this replica may act.

    Leadership lasts `deadline` seconds from the start of the last successful renewal (`duration - renew`, at
    least half the duration), whatever the renewal in flight does: a renewal that hangs (the API server
    unreachable, a partition) ends it before a standby may take the Lease at `duration`, so two replicas never
    both act (client-go's renew deadline). Each Lease call is bounded by `renew` seconds."""

    def __init__(
        self, api: client.CoordinationV1Api, name: str, namespace: str, identity: str, duration: float, renew: float
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.renew = renew
        self.deadline = max(duration - renew, duration / 2)
        self._renewed_at: float | None = None  # time.monotonic() at the start of the last successful renewal

    @property
    def is_leader(self) -> bool:
        at = self._renewed_at
        return at is not None and time.monotonic() - at < self.deadline

    def _held(self, since: float | None) -> bool:
        """Record a renewal's outcome: held since `since` (its start), or not held (None)."""
        self._renewed_at = since
        return since is not None

    def tick(self, now: float) -> bool:
        """One attempt to take or renew the Lease (blocking I/O; run in a thread). A success counts from its
        start: one that took longer than the deadline leaves this replica not leading until the next."""
        started = time.monotonic()
        timeout = max(1.0, self.renew)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=lease_spec(None, self.identity, now, self.duration),
            )
            try:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
            except ApiException as exc2:
                if exc2.status != 409:
                    raise
                return self._held(None)
            return self._held(started) and self.is_leader
        spec = self.api.api_client.sanitize_for_serialization(lease.spec) or {}
        if not may_hold(spec, self.identity, now, self.duration):
            return self._held(None)
        lease.spec = lease_spec(spec, self.identity, now, self.duration)  # type: ignore[assignment]  # a dict serialises too
        try:  # resourceVersion guards it
            self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return self._held(None)
        return self._held(started) and self.is_leader

    def release(self) -> None:
        """Give the Lease up on shutdown so a standby takes over at once."""
        if not self.is_leader:
            return
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("could not release the Lease: %s", exc.reason)
        self._held(None)

    async def run(self, stop: asyncio.Event, clock: Any = None) -> None:
        clock = clock or time.time
        while not stop.is_set():
            try:
                was = self.is_leader
                await asyncio.to_thread(self.tick, clock())
                if was != self.is_leader:
                    log.info("%s the Lease %s/%s", "took" if self.is_leader else "lost", self.namespace, self.name)
            except Exception as exc:  # keep trying; a failed renewal ends leadership at once
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
                self._held(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.renew)
