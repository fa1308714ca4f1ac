"""Fixtures of the device-plugin component tests: kmock API server, fake kubelet, fake NVML, agents."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deviceplugin.agent import Agent
from deviceplugin.inventory import NvmlInventory
from deviceplugin.kube import Kube
from deviceplugin.settings import DevicePluginSettings
from tests.deviceplugin.helpers import KEY, FakeApiServer, FakeKubelet, FakeNvmlBackend, nvml_devices

NODE = "node-a"


@pytest.fixture(scope="module")
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture()
def kube(api_server: FakeApiServer) -> Kube:
    # objects persist per module; each test uses its own node name, so they do not see each other's pods
    return api_server.kube()


@pytest.fixture()
def plugin_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dp"))  # short: unix socket paths are limited to 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Running:
    agent: Agent
    kubelet: FakeKubelet
    nvml: FakeNvmlBackend
    settings: DevicePluginSettings
    node: str


@pytest.fixture()
def start_agent(kube: Kube, plugin_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(node: str | None = None, gpus: int = 2, with_kube: bool = True, **overrides: Any) -> Running:
        node = node or f"{NODE}-{request.node.name[:30]}".replace("_", "-").replace("[", "-").replace("]", "")
        key_file = plugin_dir / "key"
        key_file.write_bytes(KEY)
        options: dict[str, Any] = {
            "node_name": node,
            "plugin_dir": str(plugin_dir),
            "signing_key_file": str(key_file),
            "kubelet_poll_seconds": 0.05,
            "health_interval_seconds": 0.05,
            "heartbeat_interval_seconds": 0.5,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "watch_timeout_seconds": 5,
            "allocate_wait_seconds": 5,
            "agent_endpoint": f"{node}.agents:9403",
        }
        options.update(overrides)
        settings = DevicePluginSettings(**options)
        nvml = FakeNvmlBackend(nvml_devices(gpus))
        inventory = NvmlInventory(nvml, numa_of=lambda bus: 0 if bus.startswith("00000000:3B") else 1)
        kubelet = FakeKubelet(plugin_dir)
        kubelet.start()
        agent = Agent(settings, kube if with_kube else None, inventory, KEY)
        agent.start()
        running = Running(agent, kubelet, nvml, settings, node)
        started.append(running)
        return running

    yield start
    for running in started:
        running.agent.stop()
        running.kubelet.stop()
