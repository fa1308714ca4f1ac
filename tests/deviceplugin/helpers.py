"""Test doubles for the device plugin: a kmock API server in a thread, a fake kubelet, a fake NVML backend."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import kmock
import kubernetes
from kmock._internal import apps

from deviceplugin.api import pb2, pb2_grpc
from deviceplugin.inventory import NvmlDevice
from deviceplugin.kube import Kube
from gpupool import resources
from gpupool.assignment import Assignment, SliceRecord

KEY = b"test-signing-key-0123456789"


class FakeApiServer:
    """kmock's KubernetesEmulator on a loopback port, run by its own event loop in a thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("kmock did not start")

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, apps.Server(handler) as server:
            handler.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod")
            handler.resources["v1/nodes"] = kmock.ResourceInfo(namespaced=False, kind="Node")
            handler.resources["gpupool.io/v1alpha1/gpunodes"] = kmock.ResourceInfo(
                namespaced=False, kind="GPUNode", subresources={"status"}
            )
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def kube(self) -> Kube:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.connection_pool_maxsize = 64
        return Kube(kubernetes.client.ApiClient(configuration), timeout_s=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def make_pod(
    name: str,
    node: str,
    containers: Sequence[int] = (1,),
    *,
    namespace: str = "default",
    created: str = "2025-01-01T00:00:00Z",
    uid: str | None = None,
) -> dict[str, Any]:
    """A bound pod whose app containers ask for the given numbers of slices."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuidlib.uuid4()),
            "creationTimestamp": created,
            "annotations": {},
        },
        "spec": {
            "nodeName": node,
            "schedulerName": resources.SCHEDULER_NAME,
            "containers": [
                {"name": f"c{i}", "image": "x", "resources": {"limits": {resources.GPU: str(n)}}}
                for i, n in enumerate(containers)
            ],
        },
        "status": {"phase": "Pending"},
    }


def assignment_for(
    pod: dict[str, Any],
    node: str,
    slices: Sequence[tuple[int, str, str, int, int]],
    *,
    at: str = "2025-01-01T00:00:00Z",
    key: bytes | None = KEY,
    assigned_node: str | None = None,
    init: bool = False,
) -> str:
    """Signed assignment text; slices = (container, gpu uuid, slot, compute, memory[, node])."""
    records = []
    for item in slices:
        c, gpu, slot, compute, memory, *rest = item
        records.append(
            SliceRecord(
                container=c,
                gpu=gpu,
                node=rest[0] if rest else node,
                compute=compute,
                memory_mib=memory,
                slot=slot,
                init=init,
            )
        )
    record = Assignment(pod=pod["metadata"]["uid"], node=assigned_node or node, slices=tuple(records), at=at)
    if key is None:
        import json

        return json.dumps({**record.payload(), "sig": ""})
    return record.signed(key).to_annotation()


def put_pod(kube: Kube, pod: dict[str, Any], assignment: str | None = None) -> dict[str, Any]:
    if assignment is not None:
        pod["metadata"]["annotations"][resources.ASSIGNMENT] = assignment
    ns = pod["metadata"]["namespace"]
    return dict(kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod, content_type="application/json"))


def get_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}"))


# --- fake kubelet -----------------------------------------------------------------------------------------


@dataclass
class Registration:
    version: str
    endpoint: str
    resource_name: str
    options: Any


class _RegistrationService(pb2_grpc.RegistrationServicer):  # type: ignore[misc]
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def Register(self, request: Any, context: Any) -> Any:
        reg = Registration(request.version, request.endpoint, request.resource_name, request.options)
        problem = self.kubelet.check(reg)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.kubelet.registrations.put(reg)
        return pb2.Empty()


@dataclass
class FakeKubelet:
    """Serves v1beta1.Registration on <dir>/kubelet.sock and dials plugins back, as the kubelet does."""

    directory: Path
    registrations: queue.Queue[Registration] = field(default_factory=queue.Queue)
    server: Any = None

    @property
    def socket(self) -> Path:
        return self.directory / "kubelet.sock"

    @staticmethod
    def check(reg: Registration) -> str:
        """The kubelet's checks (pkg/kubelet/cm/devicemanager: version, IsExtendedResourceName)."""
        if reg.version != "v1beta1":
            return f"unsupported version {reg.version!r}"
        name = reg.resource_name
        if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
            return f"invalid extended resource name {name!r}"
        return ""

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb2_grpc.add_RegistrationServicer_to_server(_RegistrationService(self), self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def stop(self, remove_socket: bool = True) -> None:
        if self.server is not None:
            self.server.stop(grace=0).wait()
            self.server = None
        if remove_socket:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()

    def wait_registration(self, timeout: float = 10) -> Registration:
        return self.registrations.get(timeout=timeout)

    @contextlib.contextmanager
    def dial(self, endpoint: str) -> Iterator[Any]:
        with grpc.insecure_channel(f"unix://{self.directory / endpoint}") as channel:
            yield pb2_grpc.DevicePluginStub(channel)


# --- fake NVML --------------------------------------------------------------------------------------------


class FakeNvmlBackend:
    """Stands in for deviceplugin.inventory.NvmlBackend (the only NVML boundary)."""

    def __init__(self, devices: Sequence[NvmlDevice]) -> None:
        self.devices = list(devices)
        self.failing: dict[int, str] = {}
        self.xids: queue.Queue[tuple[str, int]] = queue.Queue()
        self.initialised = False

    def init(self) -> None:
        self.initialised = True

    def shutdown(self) -> None:
        self.initialised = False

    def device_count(self) -> int:
        return len(self.devices)

    def device(self, index: int) -> NvmlDevice:
        return self.devices[index]

    def probe(self, index: int) -> str | None:
        return self.failing.get(index)

    def watch_xids(self, indexes: Sequence[int]) -> None:
        pass

    def next_xid(self, timeout_ms: int = 0) -> tuple[str, int] | None:
        try:
            return self.xids.get_nowait()
        except queue.Empty:
            return None


def nvml_devices(n: int = 2, memory_mib: int = 81920) -> list[NvmlDevice]:
    return [
        NvmlDevice(
            index=i,
            uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            name="NVIDIA A100-SXM4-80GB",
            memory_total_mib=memory_mib,
            pci_bus_id=f"00000000:{0x3B + i:02X}:00.0",
        )
        for i in range(n)
    ]


#: runtime/build: the pooling runtime, the fake CUDA driver and gpuprog (`make -C runtime test-bin`)
RUNTIME_BUILD = Path(__file__).resolve().parents[2] / "runtime" / "build"


def runtime_process_env(response: Any, gpu_dir: Path, fake_state: Path | None = None) -> dict[str, str]:
    """The env of a process in a container that the pool backend's Allocate answered (`response`): Allocate's env,
    the container's region directory as the container sees it at /run/gpupool, the runtime preloaded and the
    fake driver of runtime/build; `fake_state` shares one fake device clock between processes."""
    mounts = {m.container_path: m.host_path for m in response.mounts}
    env = dict(response.envs) | {
        "GPUPOOL_RUNTIME_DIR": mounts["/run/gpupool"],
        "GPUPOOL_GPU_DIR": str(gpu_dir),
        "LD_PRELOAD": str(RUNTIME_BUILD / "libgpupool.so"),
        "LD_LIBRARY_PATH": str(RUNTIME_BUILD / "fake"),
    }
    if fake_state is not None:
        env["FAKECUDA_STATE"] = str(fake_state)
    return env
