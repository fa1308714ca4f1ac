"""The kubelet-facing side: the `v1beta1.DevicePlugin` gRPC service, its unix socket, registration.

- `DeviceState`: the advertised slot ids (`gpupool.slots.all_slots`) with health following their GPU and
  NUMA topology on local slots; remote slots are always Healthy and carry no topology.
- `DevicePluginService`: GetDevicePluginOptions, ListAndWatch (ends cleanly on shutdown), GetPreferredAllocation,
  Allocate, PreStartContainer. Every failure ends in a gRPC status with a message a person can act on.
- `PluginServer`: serves on `<plugin-dir>/<socket-name>`, registers `gpupool.io/gpu` on `kubelet.sock`, and
  polls both sockets: a recreated `kubelet.sock` (new inode/mtime: the kubelet restarted) triggers a new
  registration, and a deleted own socket (a starting kubelet removes the plugin sockets) restarts the server first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from deviceplugin import allocate as allocate_mod
from deviceplugin.api import HEALTHY, UNHEALTHY, VERSION, pb2, pb2_grpc
from deviceplugin.kube import Kube, KubeError
from deviceplugin.metrics import Metrics
from deviceplugin.mps import MpsSupervisor
from deviceplugin.podcache import Match, MatchError, PodCache, format_allocated, kubelet_order, wait_synced
from deviceplugin.runtime_host import RuntimeHost
from deviceplugin.settings import DevicePluginSettings
from gpupool import resources, slots
from gpupool.inventory import GPUInfo

log = logging.getLogger(__name__)

RESOURCE_NAME = resources.GPU


class DeviceState:
    """The device list of ListAndWatch; `version` grows on every change; `stopping` ends the streams."""

    def __init__(self, slots_per_gpu: int, remote_slots: int) -> None:
        self.slots_per_gpu = slots_per_gpu
        self.remote_slots = remote_slots
        self.cond = threading.Condition()
        self.version = 0
        self.stopping = False
        self.devices: list[Any] = []
        self.gpus: list[GPUInfo] = []
        self._key: list[tuple[str, str, int | None]] = []

    def update(self, gpus: Sequence[GPUInfo]) -> bool:
        by_index = {g.index: g for g in gpus}
        ids = slots.all_slots(sorted(by_index), self.slots_per_gpu, self.remote_slots)
        key: list[tuple[str, str, int | None]] = []
        for slot in ids:
            index, _ = slots.parse_slot(slot)
            gpu = by_index.get(index) if index is not None else None
            health = HEALTHY if gpu is None or gpu.healthy else UNHEALTHY
            key.append((slot, health, gpu.numa if gpu is not None else None))
        with self.cond:
            self.gpus = list(gpus)
            if key == self._key:
                return False
            self._key = key
            self.devices = [
                pb2.Device(
                    ID=slot,
                    health=health,
                    topology=pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=numa)]) if numa is not None else None,
                )
                for slot, health, numa in key
            ]
            self.version += 1
            self.cond.notify_all()
            return True

    def snapshot(self) -> tuple[int, list[Any]]:
        with self.cond:
            return self.version, list(self.devices)

    def gpu_index(self) -> dict[str, int]:
        with self.cond:
            return {g.uuid: g.index for g in self.gpus}

    def healthy_gpu(self, index: int) -> bool | None:
        with self.cond:
            for g in self.gpus:
                if g.index == index:
                    return g.healthy
        return None

    def counts(self) -> tuple[int, int]:
        with self.cond:
            healthy = sum(1 for _, h, _ in self._key if h == HEALTHY)
            return healthy, len(self._key) - healthy

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class EndpointCache:
    """node -> `status.agentEndpoint` of its GPUNode, cached for `ttl_s`."""

    def __init__(self, kube: Kube | None, ttl_s: float = 30.0) -> None:
        self.kube = kube
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str]] = {}

    def get(self, node: str) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(node)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        obj = self.kube.get_gpunode(node) if self.kube is not None else None
        endpoint = str(((obj or {}).get("status") or {}).get("agentEndpoint") or "")
        if endpoint:
            with self._lock:
                self._cache[node] = (now, endpoint)
        return endpoint


class AllocateError(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class DevicePluginService(pb2_grpc.DevicePluginServicer):  # type: ignore[misc,name-defined]
    def __init__(
        self,
        settings: DevicePluginSettings,
        state: DeviceState,
        cache: PodCache,
        kube: Kube | None,
        metrics: Metrics,
        runtime: RuntimeHost | None = None,
        mps: MpsSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.cache = cache
        self.kube = kube
        self.metrics = metrics
        self.runtime = runtime  # pool backend: writes each container's control region
        self.mps = mps  # managed mps backend: the daemons Allocate relies on
        self.endpoints = EndpointCache(kube)

    # --- options and devices ---------------------------------------------------------------------------

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return pb2.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        version, devices = self.state.snapshot()
        log.info("ListAndWatch: sending %d slots", len(devices))
        yield pb2.ListAndWatchResponse(devices=devices)
        while True:
            with self.state.cond:

                def woken(v: int = version) -> bool:
                    return self.state.stopping or self.state.version != v or not context.is_active()

                self.state.cond.wait_for(woken, timeout=0.5)
                stopping = self.state.stopping
            if stopping or not context.is_active():
                log.info("ListAndWatch: stream ends (%s)", "shutdown" if stopping else "kubelet went away")
                return
            new_version, devices = self.state.snapshot()
            if new_version != version:
                version = new_version
                unhealthy = sum(1 for d in devices if d.health != HEALTHY)
                log.info("ListAndWatch: update, %d slots (%d unhealthy)", len(devices), unhealthy)
                yield pb2.ListAndWatchResponse(devices=devices)

    # --- preferred allocation ----------------------------------------------------------------------------

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        if not wait_synced(self.cache, self.settings.allocate_wait_seconds):
            context.abort(grpc.StatusCode.UNAVAILABLE, "pod cache of this node is not synced with the API server yet")
        responses = []
        relisted = False
        for creq in request.container_requests:
            size = int(creq.allocation_size)
            if size < 1:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"allocation_size must be >= 1, got {size}")
            available, must = list(creq.available_deviceIDs), list(creq.must_include_deviceIDs)
            hit = self.cache.candidate(available, must, size)
            if hit is None and not relisted:
                # the watch may lag behind the kubelet: re-list once (as Allocate does), so that the kubelet
                # is offered the assignment's slots rather than its own order
                relisted = True
                try:
                    self.cache.resync()
                except KubeError as exc:
                    log.warning("GetPreferredAllocation: re-listing the pods of this node failed: %s", exc)
                hit = self.cache.candidate(available, must, size)
            pick, note = hit if hit is not None else kubelet_order(available, must, size)
            log.info("GetPreferredAllocation size=%d -> %s (%s)", size, pick, note)
            responses.append(pb2.ContainerPreferredAllocationResponse(deviceIDs=pick))
        return pb2.PreferredAllocationResponse(container_responses=responses)

    # --- allocate ------------------------------------------------------------------------------------------

    def Allocate(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        matches: list[Match] = []
        try:
            if not wait_synced(self.cache, self.settings.allocate_wait_seconds):
                raise AllocateError(
                    grpc.StatusCode.UNAVAILABLE, "not_synced", "pod cache of this node is not synced yet; retry"
                )
            responses = []
            for creq in request.container_requests:
                response, match = self._allocate_one(list(creq.devices_ids))
                matches.append(match)
                responses.append(response)
        except AllocateError as exc:
            for m in matches:
                self.cache.unmark(m)
            self.metrics.allocate_failures.labels(exc.reason).inc()
            log.warning("Allocate refused (%s): %s", exc.reason, exc)
            context.abort(exc.code, str(exc))
        except Exception as exc:  # a bug or an unexpected API answer: still a clear status, never a hang
            for m in matches:
                self.cache.unmark(m)
            self.metrics.allocate_failures.labels("internal").inc()
            log.exception("Allocate failed")
            context.abort(grpc.StatusCode.INTERNAL, f"gpupool device plugin: internal error in Allocate: {exc!r}")
        self.metrics.allocate_seconds.observe(time.perf_counter() - started)
        self.metrics.slots_in_use.set(self.cache.slots_in_use())
        return pb2.AllocateResponse(container_responses=responses)

    def _allocate_one(self, device_ids: list[str]) -> tuple[Any, Match]:
        if not device_ids:
            raise AllocateError(grpc.StatusCode.INVALID_ARGUMENT, "bad_request", "Allocate with no device ids")
        for slot in device_ids:
            try:
                slots.parse_slot(slot)
            except ValueError as exc:
                raise AllocateError(grpc.StatusCode.INVALID_ARGUMENT, "bad_request", str(exc)) from None
        try:
            match = self.cache.match(device_ids)
        except MatchError as exc:
            if exc.reason != "no_match":
                raise AllocateError(grpc.StatusCode.PERMISSION_DENIED, exc.reason, str(exc)) from None
            try:  # the watch may lag behind the kubelet: re-list once, then decide
                self.cache.resync()
            except KubeError as api_exc:
                raise AllocateError(
                    grpc.StatusCode.UNAVAILABLE, "api", f"{exc}; re-listing pods failed: {api_exc}"
                ) from None
            try:
                match = self.cache.match(device_ids)
            except MatchError as again:
                code = grpc.StatusCode.NOT_FOUND if again.reason == "no_match" else grpc.StatusCode.PERMISSION_DENIED
                raise AllocateError(code, again.reason, str(again)) from None
        try:
            response = self._respond(match, device_ids)
            self._record(match)
        except AllocateError:
            self.cache.unmark(match)
            raise
        log.info(
            "Allocate %s -> pod %s container %s (%s%s)",
            device_ids,
            match.entry.key,
            match.container,
            match.how,
            f": {match.note}" if match.note else "",
        )
        self.metrics.allocations.labels(match.how).inc()
        return response, match

    def _respond(self, match: Match, device_ids: list[str]) -> Any:
        node = self.settings.node_name
        gpu_index = self.state.gpu_index()
        endpoints: dict[str, str] = {}
        for s in match.slices:
            local = s.node == node
            if local and s.gpu not in gpu_index:
                raise AllocateError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "unknown_gpu",
                    f"pod {match.entry.key}: assignment names GPU {s.gpu}, which node {node} does not have",
                )
            problem = slots.slot_problem(
                s.slot,
                gpu_index[s.gpu] if local else None,
                slots_per_gpu=self.state.slots_per_gpu,
                remote_slots=self.state.remote_slots,
            )
            if problem is not None:
                raise AllocateError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "inconsistent",
                    f"pod {match.entry.key}, slice on GPU {s.gpu} of {s.node}: {problem}; "
                    "the assignment is inconsistent",
                )
            if not local and s.node not in endpoints:
                try:
                    endpoints[s.node] = self.endpoints.get(s.node)
                except KubeError as exc:
                    raise AllocateError(
                        grpc.StatusCode.UNAVAILABLE, "api", f"reading GPUNode {s.node}: {exc}"
                    ) from None
                if not endpoints[s.node]:
                    raise AllocateError(
                        grpc.StatusCode.UNAVAILABLE,
                        "no_endpoint",
                        f"pod {match.entry.key}: remote slice on node {s.node}, but GPUNode {s.node} has no "
                        "status.agentEndpoint (is its node agent running with --agent-endpoint?)",
                    )
        plan = allocate_mod.ContainerPlan(
            pod_uid=match.entry.uid,
            pod=match.entry.key,
            container=match.container,
            slots=tuple(device_ids),
            slices=match.slices,
            node=node,
            how=match.how,
            note=match.note,
            compute_mode=match.entry.compute_mode,
        )
        self._check_mps(plan, gpu_index)
        response = allocate_mod.build_response(plan, self.settings, gpu_index, endpoints)
        if self.runtime is not None:
            try:
                self.runtime.prepare(plan, gpu_index)
            except OSError as exc:
                raise AllocateError(
                    grpc.StatusCode.INTERNAL,
                    "runtime",
                    f"pod {match.entry.key}: cannot write the runtime control region under "
                    f"{self.settings.runtime_state_dir} ({exc}); check --runtime-state-dir",
                ) from None
        return response

    def _check_mps(self, plan: allocate_mod.ContainerPlan, gpu_index: dict[str, int]) -> None:
        """Managed mps: one local GPU per container, and its daemon running (else MPS would not confine it)."""
        problem = allocate_mod.mps_problem(plan, self.settings, gpu_index)
        if problem is not None:
            raise AllocateError(grpc.StatusCode.FAILED_PRECONDITION, "mps_multi_gpu", f"pod {plan.pod}: {problem}")
        if self.mps is None:
            return
        for gpu in sorted({s.gpu for s in allocate_mod.local_slices(plan, gpu_index)}):
            if not self.mps.serving(gpu):
                raise AllocateError(
                    grpc.StatusCode.UNAVAILABLE,
                    "mps_down",
                    f"pod {plan.pod}: the MPS control daemon of GPU {gpu} is not running (the agent restarts it; "
                    f"see its log under {self.settings.mps_log_dir}); a client without it would run unconfined",
                )

    def _record(self, match: Match) -> None:
        """Write `gpupool.io/allocated` on the pod (per-pod lock only; never a node-wide one)."""
        if self.kube is None:
            return
        entry = match.entry
        with self.cache.pod_lock(entry.uid):
            keys = self.cache.served_keys(entry.uid)
            if keys is None:
                keys = entry.served()
            last: Exception | None = None
            for attempt in range(3):
                try:
                    self.kube.patch_pod_annotations(
                        entry.namespace, entry.name, {resources.ALLOCATED: format_allocated(keys)}
                    )
                    return
                except KubeError as exc:
                    if exc.status == 404:
                        raise AllocateError(
                            grpc.StatusCode.NOT_FOUND, "pod_gone", f"pod {entry.key} no longer exists"
                        ) from None
                    last = exc
                    time.sleep(0.05 * (attempt + 1))
        # the kubelet's own allocation keeps the slots taken; the record is for humans and restarts
        self.metrics.allocate_failures.labels("record").inc()
        log.error("pod %s served, but %s could not be written: %s", entry.key, resources.ALLOCATED, last)

    # --- pre-start -----------------------------------------------------------------------------------------

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        for slot in request.devices_ids:
            try:
                index, _ = slots.parse_slot(slot)
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if index is not None and self.state.healthy_gpu(index) is False:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"slot {slot}: GPU {index} turned unhealthy before the container started",
                )
        return pb2.PreStartContainerResponse()


class PluginServer:
    """Serves `DevicePluginService` on a unix socket and keeps it registered with the kubelet."""

    def __init__(
        self,
        settings: DevicePluginSettings,
        service: DevicePluginService,
        metrics: Metrics,
        on_registered: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.metrics = metrics
        self.dir = Path(settings.plugin_dir)
        self.socket = self.dir / settings.socket_name
        self.kubelet_socket = self.dir / settings.kubelet_socket
        self.server: Any = None
        self.registered_with: tuple[int, int] | None = None
        self.registrations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_ident: tuple[int, int] | None = None
        self.on_registered = on_registered

    def _serve(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="dp-grpc"))
        pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)
        if server.add_insecure_port(f"unix://{self.socket}") == 0:
            raise OSError(f"cannot listen on unix://{self.socket}")
        server.start()
        self.server = server
        self._own_ident = _ident(self.socket)
        log.info("serving %s on %s", RESOURCE_NAME, self.socket)

    def register(self) -> None:
        """One Register call to the kubelet; raises grpc.RpcError on failure."""
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            stub = pb2_grpc.RegistrationStub(channel)
            stub.Register(
                pb2.RegisterRequest(
                    version=VERSION,
                    endpoint=self.settings.socket_name,
                    resource_name=RESOURCE_NAME,
                    options=pb2.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True),
                ),
                timeout=5,
            )

    def start(self) -> None:
        self._serve()
        self._thread = threading.Thread(target=self._loop, name="dp-kubelet-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            own = _ident(self.socket)
            if own is None or own != self._own_ident:
                log.warning("plugin socket %s was removed (kubelet restart?); serving again", self.socket)
                try:
                    self._serve()
                except Exception as exc:
                    log.error("cannot serve on %s: %s", self.socket, exc)
                self.registered_with = None
            kubelet = _ident(self.kubelet_socket)
            if kubelet is not None and kubelet != self.registered_with:
                try:
                    self.register()
                    self.registered_with = kubelet
                    self.registrations += 1
                    failures = 0
                    self.metrics.registrations.labels("ok").inc()
                    log.info("registered %s with the kubelet (%s)", RESOURCE_NAME, self.kubelet_socket)
                    if self.on_registered is not None:
                        self.on_registered()
                except grpc.RpcError as exc:
                    failures += 1
                    self.metrics.registrations.labels("error").inc()
                    log.warning(
                        "registration with the kubelet failed (%s: %s); retrying",
                        exc.code() if hasattr(exc, "code") else "?",
                        exc.details() if hasattr(exc, "details") else exc,
                    )
                    self._stop.wait(min(0.2 * 2**failures, 5.0))
                    continue
            elif kubelet is None and self.registered_with is not None:
                log.warning("kubelet socket %s disappeared; waiting for the kubelet", self.kubelet_socket)
                self.registered_with = None
            self._stop.wait(self.settings.kubelet_poll_seconds)

    @property
    def registered(self) -> bool:
        return self.registered_with is not None

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.service.state.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.server is not None:
            self.server.stop(grace=grace).wait(timeout=grace + 1)
        try:
            if _ident(self.socket) == self._own_ident:
                os.unlink(self.socket)
        except FileNotFoundError:
            pass


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
