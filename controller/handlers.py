"""The operator's wiring: kopf's startup and cleanup hooks, the watches that feed `controller.runtime.Controller`,
and the admission webhooks (served by `controller.webhook_server`), which call `controller.admission`.

Nothing is watched through kopf (it runs the operator's startup and cleanup): a `kubeio.reflector.Reflector` thread
per kind watches from the startup list's resourceVersion, and after a broken or expired watch its list replaces what
the controller holds (`Controller.on_pod_list`, `Controller.on_list`). kopf's re-list only adds and updates, so a
GPUQueue or GPUNode deleted while its watch was down stayed in the model (a deleted queue kept admitting); and its
per-event machinery cost about 1.3 ms of CPU per pod event (docs/e2e.md "Issue 16: ... (session 10)").

Every replica runs the watches and serves the webhooks (hot standby); only the Lease holder runs the
admission cycle (see `controller.leader`). Import this module (or run `gpupool-controller`) to register.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import kopf

from controller import admission, metrics, webhook_server
from controller.kube import GPUNODES, GPUQUEUES, NAMESPACES, NODES, PODS, Kube, load_api_client
from controller.leader import LeaseElector
from controller.runtime import WATCHED, Controller
from controller.settings import ControllerSettings
from controller.webhooks import MUTATE_PATH, VALIDATE_PATH
from gpupool import resources
from gpupool.signing_key import KeyRing
from kubeio.reflector import Reflector

log = logging.getLogger("gpupool.controller")

#: set by `controller.main` before kopf starts (tests may set it too); else read from the environment
SETTINGS: ControllerSettings | None = None
STATE: Controller | None = None
#: the watches' server-side timeout (each then resumes from its last resourceVersion)
WATCH_SECONDS = 300


def current() -> Controller | None:
    return STATE


def readiness() -> dict[str, Any] | None:
    """/readyz (`controller.probes`): None until the controller exists (it is built after listing everything)."""
    return STATE.readiness() if STATE is not None else None


async def _keys_loop(ring: KeyRing, state: Controller, stop: asyncio.Event, interval: float = 2.0) -> None:
    """Re-read the mounted signing Secret; on a change, every pod's assignment is read again (in a thread: the
    loop keeps serving the watches)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        try:
            if ring.refresh():
                await asyncio.to_thread(state.on_keys_changed)
        except Exception:
            log.exception("re-reading the signing keys failed")


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (`startup`): HA is a Lease (`controller.leader`), not kopf peering."""
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING


#: the kinds watched besides pods: path -> `Controller.on_list` / `on_watch_event` resource
WATCH_PATHS = dict(zip((NAMESPACES, NODES, GPUQUEUES, GPUNODES), WATCHED, strict=True))


def watches(kube: Kube, state: Controller) -> list[Reflector]:
    """The controller's watches (not started): pods, and every kind of `WATCH_PATHS`, each from its startup list's
    resourceVersion; a relist is counted (`gpupool_controller_relists_total`) and replaces what the model holds."""

    kinds: dict[str, tuple[str, Any, Any]] = {PODS: ("pods", state.on_pod_list, state.on_pod_event)}
    for path, resource in WATCH_PATHS.items():
        kinds[path] = (resource, functools.partial(state.on_list, resource),
                       functools.partial(state.on_watch_event, resource))  # fmt: skip
    out = []
    for path, (resource, on_list, on_event) in kinds.items():

        def relisted(items: list[dict[str, Any]], resource: str = resource, on_list: Any = on_list) -> None:
            metrics.RELISTS.labels(resource).inc()
            on_list(items)

        out.append(Reflector(kube.raw, path, relisted, on_event, since=kube.listed_at.get(path, ""),
                             watch_timeout=WATCH_SECONDS, name=f"gpupool-{resource.rstrip('s')}-watch"))  # fmt: skip
    return out


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global STATE
    cfg = SETTINGS or ControllerSettings()
    configure(settings)
    key = KeyRing(cfg.signing_key_file)
    api_client = load_api_client(cfg.kubeconfig)
    kube = Kube(api_client)
    state = Controller(cfg, kube, key)
    await state.rebuild()
    reflectors = watches(kube, state)
    for reflector in reflectors:
        reflector.start()
    memo["reflectors"] = reflectors
    STATE = state
    stop = asyncio.Event()
    memo["stop"] = stop
    if cfg.webhook_enabled:  # after the rebuild, as kopf's server started: the bounds are known when it answers
        if not (cfg.webhook_cert_file and cfg.webhook_key_file):
            raise kopf.PermanentError("the webhooks need webhook_cert_file and webhook_key_file (or webhook_enabled "
                                      "false)")  # fmt: skip
        server = webhook_server.AdmissionServer(cfg.webhook_host, cfg.webhook_port, cfg.webhook_cert_file,
                                                cfg.webhook_key_file, WEBHOOKS)  # fmt: skip
        await server.start()
        memo["webhooks"] = server
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
    reflectors = memo.get("reflectors") or []
    for reflector in reflectors:
        reflector.stop()
    if reflectors:
        reflectors[0].api.close_streams()
    server = memo.get("webhooks")
    if server is not None:
        await server.stop()
    elector = memo.get("elector")
    if elector is not None:
        await asyncio.to_thread(elector.release)


def mutate_pods(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mutating webhook (CREATE): the JSON patch for the pod; none for pods that do not mention gpupool."""
    if not resources.mentions_gpupool(pod):
        return []
    selector = STATE.queue_node_selector(pod) if STATE is not None else {}
    return admission.mutation_patch(pod, node_selector=selector)


def validate_pods(body: Mapping[str, Any], old: Any, operation: str, userinfo: Any) -> None:
    """The validating webhook (CREATE, UPDATE): raises `kopf.AdmissionError` (code 400) naming every problem."""
    state = STATE
    ready = state is not None and state.ready
    limits = state.pool_limits() if state is not None and ready else admission.PoolLimits()
    config = (
        state.admission
        if state is not None
        else admission.AdmissionConfig(frozenset((SETTINGS or ControllerSettings()).system_usernames))
    )
    pod, previous = dict(body), dict(old) if old is not None else None
    errors = admission.validate(pod, old=previous, operation=operation, userinfo=userinfo, limits=limits,
                                config=config)  # fmt: skip
    errors += admission.tenancy_errors(
        pod,
        old=previous,
        operation=operation,
        queue_problem=state.queue_problem if state is not None and ready else None,
    )
    errors += admission.group_errors(
        pod, operation=operation, group_problem=_group_problem if state is not None and ready else None
    )
    if errors:
        raise kopf.AdmissionError(admission.rejection_message(errors), code=400)


def _group_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """`Controller.group_problem` under the lock: it walks the pods, which the watch handlers change meanwhile."""
    state = STATE
    if state is None:
        return None
    with state.lock:
        return state.group_problem(pod)


def mutate_review(request: Mapping[str, Any]) -> dict[str, Any]:
    """/mutate-pods (`controller.webhook_server`): the AdmissionReview answer for one request."""
    if request.get("operation") != "CREATE":
        return {"allowed": True}
    ops = mutate_pods(request["object"])
    if not ops:
        return {"allowed": True}
    patch = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode("ascii")
    return {"allowed": True, "patch": patch, "patchType": "JSONPatch"}


def validate_review(request: Mapping[str, Any]) -> dict[str, Any]:
    """/validate-pods (`controller.webhook_server`): the AdmissionReview answer for one request."""
    operation = str(request.get("operation") or "")
    if operation not in ("CREATE", "UPDATE"):
        return {"allowed": True}
    old = request.get("oldObject")
    try:
        validate_pods(request["object"], old if isinstance(old, dict) else None, operation, request.get("userInfo"))
    except kopf.AdmissionError as exc:
        return {"allowed": False, "status": {"code": exc.code or 400, "message": str(exc)}}
    return {"allowed": True}


WEBHOOKS: dict[str, webhook_server.Webhook] = {MUTATE_PATH: mutate_review, VALIDATE_PATH: validate_review}
