"""Inventory sources, settings, the allocated-annotation format, multi-node publishing, the entry point."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deviceplugin.agent import Agent, MultiNodeAgent
from deviceplugin.inventory import (
    FakeInventory,
    InventoryError,
    NvmlInventory,
    fake_uuid,
    load_fake_inventory,
    numa_node_of,
    pci_sysfs_id,
)
from deviceplugin.kube import Kube
from deviceplugin.podcache import format_allocated, parse_allocated
from deviceplugin.settings import Backend, DevicePluginSettings
from e2e.polling import wait_for
from tests.deviceplugin.helpers import FakeNvmlBackend, nvml_devices

ROOT = Path(__file__).resolve().parents[2]


def count_requests(kube: Kube) -> list[tuple[str, str]]:
    """From now on, every (method, path) `kube` is asked, in order."""
    calls: list[tuple[str, str]] = []
    original = kube.request

    def counting(method: str, path: str, **kw: Any) -> Any:
        calls.append((method, path))
        return original(method, path, **kw)

    kube.request = counting  # type: ignore[method-assign]
    return calls


def test_fake_inventory_list_and_map_forms(tmp_path: Path) -> None:
    single = tmp_path / "one.yaml"
    single.write_text(
        "- {uuid: GPU-a, model: A100, memoryMiB: 81920, numa: 0}\n- {model: T4, memoryMiB: 15360, count: 2}\n"
    )
    gpus = load_fake_inventory(single, "n1")["n1"]
    assert [(g.uuid, g.index, g.model, g.memory_mib, g.numa) for g in gpus] == [
        ("GPU-a", 0, "A100", 81920, 0),
        (fake_uuid("n1", 1), 1, "T4", 15360, None),
        (fake_uuid("n1", 2), 2, "T4", 15360, None),
    ]
    assert fake_uuid("n1", 1) == fake_uuid("n1", 1) != fake_uuid("n2", 1)  # stable across restarts
    many = tmp_path / "many.yaml"
    many.write_text("a: [{model: A100, memoryMiB: 80, count: 4}]\nb: [{model: T4, memoryMiB: 16, health: Unhealthy}]\n")
    nodes = load_fake_inventory(many)
    assert {n: len(g) for n, g in nodes.items()} == {"a": 4, "b": 1}
    assert nodes["b"][0].healthy is False
    with pytest.raises(InventoryError, match="missing memoryMiB"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("- {model: A100}\n")
        load_fake_inventory(bad, "n")
    with pytest.raises(InventoryError, match="unknown keys"):
        bad.write_text("- {model: A100, memoryMiB: 1, colour: red}\n")
        load_fake_inventory(bad, "n")


def test_fake_inventory_health_flips_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text("node-x:\n- {model: A100, memoryMiB: 100, count: 2}\n")
    inventory = FakeInventory(path, "node-x")
    assert [g.healthy for g in inventory.gpus()] == [True, True]
    assert inventory.refresh() is False
    time.sleep(0.01)
    path.write_text("node-x:\n- {model: A100, memoryMiB: 100}\n- {model: A100, memoryMiB: 100, health: Unhealthy}\n")
    os.utime(path, (time.time() + 1, time.time() + 1))
    assert inventory.refresh() is True
    assert [g.healthy for g in inventory.gpus()] == [True, False]


def test_nvml_inventory_numa_and_probe_errors() -> None:
    backend = FakeNvmlBackend(nvml_devices(2))
    inventory = NvmlInventory(backend, numa_of=lambda bus: {"00000000:3B:00.0": 0}.get(bus))
    gpus = inventory.gpus()
    assert [(g.index, g.numa, g.memory_mib, g.healthy) for g in gpus] == [(0, 0, 81920, True), (1, None, 81920, True)]
    backend.failing[0] = "NVML: Unknown Error"
    assert inventory.refresh() is True
    assert [g.healthy for g in inventory.gpus()] == [False, True]
    assert inventory.reasons() == {gpus[0].uuid: "NVML: Unknown Error"}
    del backend.failing[0]
    assert inventory.refresh() is True and all(g.healthy for g in inventory.gpus())


def test_mig_enabled_gpus_stay_out_of_the_pool() -> None:
    devices = nvml_devices(3)
    devices[1] = dataclasses.replace(devices[1], mig_enabled=True)
    inventory = NvmlInventory(FakeNvmlBackend(devices), numa_of=lambda _: 0)
    assert [g.index for g in inventory.gpus()] == [0, 2]


def test_pci_bus_id_to_sysfs_numa(tmp_path: Path) -> None:
    assert pci_sysfs_id("00000000:3B:00.0") == "0000:3b:00.0"
    (tmp_path / "0000:3b:00.0").mkdir()
    (tmp_path / "0000:3b:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:5e:00.0").mkdir()
    (tmp_path / "0000:5e:00.0" / "numa_node").write_text("-1\n")
    assert numa_node_of("00000000:3B:00.0", str(tmp_path)) == 1
    assert numa_node_of("00000000:5E:00.0", str(tmp_path)) is None
    assert numa_node_of("00000000:AF:00.0", str(tmp_path)) is None


def test_allocated_annotation_format() -> None:
    assert format_allocated({"1", "init:0", "0", "init:2", "10"}) == '["init:0","init:2","0","1","10"]'
    assert parse_allocated('["init:0","0"]') == {"init:0", "0"}
    assert parse_allocated(None) == frozenset() and parse_allocated("garbage") == frozenset()


def test_settings_env_flags_and_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-downward-api")
    monkeypatch.setenv("GPUPOOL_BACKEND", "hami-core")
    s = DevicePluginSettings.from_args(["--slots-per-gpu", "8", "--cdi", "true"])
    assert (s.node_name, s.backend, s.slots_per_gpu, s.cdi, s.remote_slots) == (
        "from-downward-api",
        Backend.HAMI_CORE,
        8,
        True,
        16,
    )
    assert DevicePluginSettings.from_args(["--node-name", "flag"]).node_name == "flag"
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(ValueError, match="node name unknown"):
        DevicePluginSettings.from_args([])


def test_multi_node_mode_publishes_every_fake_node(tmp_path: Path, kube: Kube) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("kw-0:\n- {model: A100, memoryMiB: 81920, count: 4}\nkw-1:\n- {model: T4, memoryMiB: 15360}\n")
    settings = DevicePluginSettings(
        multi_node=True, fake_inventory=str(path), health_interval_seconds=0.05, heartbeat_interval_seconds=0.2
    )
    agent = MultiNodeAgent(settings, kube)
    assert agent.publish_all() == 2
    first = kube.get_gpunode("kw-0")["status"]
    assert len(first["gpus"]) == 4 and first["slotsPerGPU"] == 32
    assert kube.get_gpunode("kw-1")["status"]["gpus"][0]["model"] == "T4"
    import threading

    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        rounds = agent.rounds
        wait_for(lambda: agent.rounds >= rounds + 2)  # heartbeats keep coming
        path.write_text("kw-0:\n- {model: A100, memoryMiB: 81920, count: 4}\nkw-1:\n- {model: T4, memoryMiB: 15360, "
                        "health: Unhealthy}\n")  # fmt: skip
        os.utime(path, (time.time() + 2, time.time() + 2))
        wait_for(lambda: kube.get_gpunode("kw-1")["status"]["gpus"][0]["health"] == "Unhealthy")
    finally:
        agent.stop_event.set()
        thread.join(timeout=5)


def test_entry_point_help_and_bad_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME" and not k.startswith("GPUPOOL_")}
    out = subprocess.run(
        [sys.executable, "-c", "from deviceplugin.main import main; raise SystemExit(main(['--help']))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0 and "--fake-inventory" in out.stdout and "--backend" in out.stdout
    out = subprocess.run(
        [sys.executable, "-c", "from deviceplugin.main import main; raise SystemExit(main([]))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2 and "node name unknown" in out.stderr


def test_installed_command_runs_the_agent() -> None:
    """The `gpupool-deviceplugin` command of the installed package is this entry point and runs."""
    from deviceplugin import main as entry

    (point,) = importlib.metadata.entry_points(group="console_scripts", name="gpupool-deviceplugin")
    assert point.load() is entry.main
    script = shutil.which("gpupool-deviceplugin", path=str(Path(sys.executable).parent))
    assert script, f"gpupool-deviceplugin is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME" and not k.startswith("GPUPOOL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: gpupool-deviceplugin")
    assert "--agent-endpoint" in out.stdout
    out = subprocess.run([script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("gpupool-deviceplugin: ") and "node name unknown" in out.stderr


def test_node_agent_publishes_its_endpoint_with_the_node_name_expanded(tmp_path: Path, kube: Kube) -> None:
    """The chart may pass `{node}` in --agent-endpoint (a DNS name per node): the single-node agent expands it as
    the multi-node publisher does."""
    path = tmp_path / "gpus.yaml"
    path.write_text("- {model: T4, memoryMiB: 15360}\n")
    node = "ep-0"
    kube.request("POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}},
                 content_type="application/json")  # fmt: skip
    settings = DevicePluginSettings(node_name=node, fake_inventory=str(path), agent_endpoint="{node}.gpu.example:9403")
    agent = Agent(settings, kube, FakeInventory(str(path), node), b"k" * 32)
    assert agent.publisher is not None
    agent.publisher.publish(agent.inventory.gpus())
    assert kube.get_gpunode(node)["status"]["agentEndpoint"] == "ep-0.gpu.example:9403"
    assert settings.endpoint_of("other") == "other.gpu.example:9403"


def test_multi_node_heartbeat_is_one_status_patch_per_node(tmp_path: Path, kube: Kube) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("hb-0:\n- {model: A100, memoryMiB: 81920}\nhb-1:\n- {model: T4, memoryMiB: 15360}\n")
    for name in ("hb-0", "hb-1"):
        kube.request("POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}},
                     content_type="application/json")  # fmt: skip
    settings = DevicePluginSettings(multi_node=True, fake_inventory=str(path), agent_endpoint="{node}:9403")
    agent = MultiNodeAgent(settings, kube)
    assert agent.publish_all() == 2
    assert kube.get_gpunode("hb-1")["status"]["agentEndpoint"] == "hb-1:9403"
    calls = count_requests(kube)
    assert agent.publish_all() == 2
    assert sorted(m for m, _ in calls) == ["PATCH", "PATCH"]
    assert all(p.endswith("/status") for _, p in calls)


def test_health_gauges_follow_the_inventory(tmp_path: Path) -> None:
    """Slot and GPU health gauges hold the values of the inventory, and follow it when a GPU turns healthy."""
    path = tmp_path / "gpus.yaml"
    path.write_text("- {model: T4, memoryMiB: 15360}\n- {model: T4, memoryMiB: 15360, health: Unhealthy}\n")
    settings = DevicePluginSettings(node_name="gauge-0", fake_inventory=str(path), slots_per_gpu=4, remote_slots=2)
    agent = Agent(settings, None, FakeInventory(str(path), "gauge-0"), b"k" * 32)
    registry = agent.metrics.registry
    # advertised ids: 4 per GPU, and the 2 remote slots (always healthy)
    assert registry.get_sample_value("gpupool_deviceplugin_slots", {"health": "Healthy"}) == 4 + 2
    assert registry.get_sample_value("gpupool_deviceplugin_slots", {"health": "Unhealthy"}) == 4
    assert registry.get_sample_value("gpupool_deviceplugin_gpus_unhealthy") == 1
    path.write_text("- {model: T4, memoryMiB: 15360}\n- {model: T4, memoryMiB: 15360}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even within the clock's resolution
    agent.check_health()
    assert registry.get_sample_value("gpupool_deviceplugin_slots", {"health": "Healthy"}) == 8 + 2
    assert registry.get_sample_value("gpupool_deviceplugin_slots", {"health": "Unhealthy"}) == 0
    assert registry.get_sample_value("gpupool_deviceplugin_gpus_unhealthy") == 0


def test_multi_node_first_round_lists_once_and_creates_missing_gpunodes_without_a_failed_patch(
    tmp_path: Path, kube: Kube
) -> None:
    """The first publish of N fake nodes: one GPUNode list, then create + status patch (+ labels) per missing
    node, never a status patch answered 404 first (a quarter of the requests at 5,000 nodes)."""
    path = tmp_path / "nodes.yaml"
    path.write_text("fr-0:\n- {model: A100, memoryMiB: 81920}\nfr-1:\n- {model: T4, memoryMiB: 15360}\n")
    kube.create_gpunode("fr-1")  # already there: patched, not created
    calls = count_requests(kube)
    settings = DevicePluginSettings(multi_node=True, fake_inventory=str(path), publish_workers=2, publish_qps=0)
    agent = MultiNodeAgent(settings, kube)
    assert agent.publish_all() == 2
    gpunode_calls = [(m, p.rsplit("gpunodes", 1)[-1]) for m, p in calls if "gpunodes" in p]
    assert sorted(gpunode_calls) == sorted(
        [("GET", ""), ("POST", ""), ("PATCH", "/fr-0/status"), ("PATCH", "/fr-1/status")]
    )
    assert kube.get_gpunode("fr-0")["status"]["gpus"][0]["model"] == "A100"


def test_a_failed_publish_is_tried_again_on_the_next_health_tick_not_a_heartbeat_later(
    tmp_path: Path, kube: Kube
) -> None:
    """A GPUNode write refused (a timeout on a loaded API server) used to wait for the next heartbeat round (an hour
    in the 5,000-node bench): its node stayed out of the pool. Now only the failed nodes are published again on the
    next health tick."""
    from kubeio.client import ApiError

    path = tmp_path / "nodes.yaml"
    path.write_text("rt-0:\n- {model: A100, memoryMiB: 81920}\nrt-1:\n- {model: T4, memoryMiB: 15360}\n")
    original = kube.request
    refused: list[str] = []

    def flaky(method: str, path: str, **kw: Any) -> Any:
        if "rt-1" in path and not refused:
            refused.append(path)
            raise ApiError(504, "Timeout: the server was unable to return a response in the time allotted")
        return original(method, path, **kw)

    kube.request = flaky  # type: ignore[method-assign]
    settings = DevicePluginSettings(multi_node=True, fake_inventory=str(path), publish_workers=1, publish_qps=0,
                                    health_interval_seconds=0.05, heartbeat_interval_seconds=3600)  # fmt: skip
    agent = MultiNodeAgent(settings, kube)
    import threading

    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        def published() -> bool:
            try:
                return bool(kube.get_gpunode("rt-1").get("status", {}).get("gpus"))
            except ApiError:
                return False

        wait_for(lambda: bool(refused) and published(), timeout=10)
        assert agent.rounds == 1  # no second heartbeat round: the retry alone published it
        assert kube.get_gpunode("rt-1")["status"]["gpus"][0]["model"] == "T4"
    finally:
        agent.stop_event.set()
        thread.join(timeout=5)


def test_publish_rate_limit_spaces_starts() -> None:
    from deviceplugin.agent import RateLimit

    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))

    limit = RateLimit(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limit.wait()
    assert slept == [0.25, 0.5]  # the first starts at once, the next ones 1/qps apart
    unlimited = RateLimit(0.0, clock=lambda: now[0], sleep=sleep)
    unlimited.wait()
    unlimited.wait()
    assert slept == [0.25, 0.5]
