"""kopf handlers: watches feed `controller.runtime.Controller`; admission webhooks call `controller.admission`.

Every replica runs the watches and serves the webhooks (hot standby); only the Lease holder runs the
admission cycle (see `controller.leader`). Import this module (or run `gpupool-controller`) to register.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import kopf

from controller import admission
from controller.kube import Kube, load_api_client
from controller.leader import LeaseElector
from controller.runtime import Controller
from controller.settings import ControllerSettings
from controller.webhooks import MUTATE_PATH, VALIDATE_PATH
from gpupool import objects, resources
from gpupool.signing_key import KeyRing

log = logging.getLogger("gpupool.controller")

#: set by `controller.main` before kopf starts (tests may set it too); else read from the environment
SETTINGS: ControllerSettings | None = None
STATE: Controller | None = None


def current() -> Controller | None:
    return STATE


def readiness() -> dict[str, Any] | None:
    """/readyz (`controller.probes`): None until the controller exists (it is built after listing everything)."""
    return STATE.readiness() if STATE is not None else None


async def _keys_loop(ring: KeyRing, state: Controller, stop: asyncio.Event, interval: float = 2.0) -> None:
    """Re-read the mounted signing Secret; on a change, quarantined pods are read again."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        try:
            if ring.refresh():
                state.on_keys_changed()
        except Exception:
            log.exception("re-reading the signing keys failed")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global STATE
    cfg = SETTINGS or ControllerSettings()
    settings.peering.standalone = True  # HA is a Lease (controller.leader), not kopf peering
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # kopf holds each object's events for this long to batch them (default 0.1 s): a freed slice or a new pod
    # would wait that long before it wakes the admission cycle (docs/fairshare.md); the handlers are cheap
    settings.batching.batch_window = 0.01
    if cfg.webhook_enabled:
        settings.admission.server = kopf.WebhookServer(
            addr=cfg.webhook_host, port=cfg.webhook_port, certfile=cfg.webhook_cert_file, pkeyfile=cfg.webhook_key_file
        )
        settings.admission.managed = None  # the chart (or the test) owns the configurations: matchConditions
    key = KeyRing(cfg.signing_key_file)
    api_client = load_api_client(cfg.kubeconfig)
    kube = Kube(api_client)
    state = Controller(cfg, kube, key)
    await state.rebuild()
    STATE = state
    stop = asyncio.Event()
    memo["stop"] = stop
    tasks = [asyncio.create_task(state.run_cycles(stop)), asyncio.create_task(_keys_loop(key, state, stop))]
    if cfg.leader_election:
        identity = cfg.identity or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaseElector(kube.coordination, cfg.lease_name, cfg.lease_namespace, identity,
                               cfg.lease_duration_seconds, cfg.lease_renew_seconds)  # fmt: skip
        memo["elector"] = elector

        async def follow() -> None:
            from controller import metrics

            while not stop.is_set():
                state.is_leader = elector.is_leader
                metrics.LEADER.set(1 if elector.is_leader else 0)
                await asyncio.sleep(0.2)

        tasks.append(asyncio.create_task(elector.run(stop, time.time)))
        tasks.append(asyncio.create_task(follow()))
    memo["tasks"] = tasks


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    stop = memo.get("stop")
    if stop is not None:
        stop.set()
    for task in memo.get("tasks") or []:
        task.cancel()
    elector = memo.get("elector")
    if elector is not None:
        await asyncio.to_thread(elector.release)


def _type(event: Any) -> str:
    return str((event or {}).get("type") or "ADDED")


@kopf.on.event("", "v1", "pods")
def pod_event(event: Any, body: kopf.Body, **_: Any) -> None:
    state = STATE
    if state is not None:
        with state.lock:  # the admission cycle runs on the event loop meanwhile
            state.on_pod(_type(event), dict(body))


@kopf.on.event(objects.GROUP, objects.VERSION, objects.GPUNODE_PLURAL)
def gpunode_event(event: Any, body: kopf.Body, **_: Any) -> None:
    state = STATE
    if state is not None:
        with state.lock:  # the admission cycle runs on the event loop meanwhile
            state.on_gpunode(_type(event), dict(body))


@kopf.on.event(objects.GROUP, objects.VERSION, objects.GPUQUEUE_PLURAL)
def gpuqueue_event(event: Any, body: kopf.Body, **_: Any) -> None:
    state = STATE
    if state is not None:
        with state.lock:  # the admission cycle runs on the event loop meanwhile
            state.on_queue(_type(event), dict(body))


@kopf.on.event("", "v1", "nodes")
def node_event(event: Any, body: kopf.Body, **_: Any) -> None:
    state = STATE
    if state is not None:
        with state.lock:  # the admission cycle runs on the event loop meanwhile
            state.on_node(_type(event), dict(body))


@kopf.on.event("", "v1", "namespaces")
def namespace_event(event: Any, body: kopf.Body, **_: Any) -> None:
    state = STATE
    if state is not None:
        with state.lock:  # the admission cycle runs on the event loop meanwhile
            state.on_namespace(_type(event), dict(body))


@kopf.on.mutate("", "v1", "pods", id=MUTATE_PATH, operations=["CREATE"], persistent=True)
def mutate_pods(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    pod = dict(body)
    if not resources.mentions_gpupool(pod):
        return
    selector = STATE.queue_node_selector(pod) if STATE is not None else {}
    new = admission.mutate(pod, node_selector=selector)

    def replace(raw: Any) -> None:
        raw.clear()
        raw.update(new)

    patch.fns.append(replace)


# kopf passes `old` and `operation` to webhooks, but its WebhookFn protocol does not name them
@kopf.on.validate("", "v1", "pods", id=VALIDATE_PATH, operations=["CREATE", "UPDATE"], persistent=True)  # type: ignore[arg-type]
def validate_pods(body: kopf.Body, old: Any, operation: str, userinfo: Any, **_: Any) -> None:
    limits = STATE.pool_limits() if STATE is not None and STATE.ready else admission.PoolLimits()
    config = STATE.admission if STATE is not None else admission.AdmissionConfig(
        frozenset((SETTINGS or ControllerSettings()).system_usernames)
    )
    errors = admission.validate(
        dict(body), old=dict(old) if old is not None else None, operation=operation,
        userinfo=userinfo, limits=limits, config=config,
    )  # fmt: skip
    errors += admission.tenancy_errors(
        dict(body), old=dict(old) if old is not None else None, operation=operation,
        queue_problem=STATE.queue_problem if STATE is not None and STATE.ready else None,
    )  # fmt: skip
    ready = STATE is not None and STATE.ready
    errors += admission.group_errors(dict(body), operation=operation,
                                     group_problem=STATE.group_problem if STATE is not None and ready else None)
    if errors:
        raise kopf.AdmissionError(admission.rejection_message(errors), code=400)
