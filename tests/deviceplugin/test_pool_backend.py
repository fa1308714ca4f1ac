"""The `pool` backend: Allocate injects gpupool's runtime and the agent writes, reads and cleans its regions."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deviceplugin import runtime_regions as regions
from deviceplugin.kube import Kube
from e2e.polling import wait_for
from gpupool import resources
from tests.deviceplugin.helpers import assignment_for, make_pod, put_pod, runtime_process_env
from tests.deviceplugin.test_plugin import GPU0, GPU1, allocate, cached, preferred

ROOT = Path(__file__).resolve().parents[2]


def start_pool(start_agent: Any, tmp_path: Path, **overrides: Any) -> Any:
    library = tmp_path / "image" / "libgpupool.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF stand-in for the runtime library")
    return start_agent(
        backend="pool",
        runtime_library=str(library),
        runtime_lib_dir=str(tmp_path / "lib"),
        runtime_state_dir=str(tmp_path / "state"),
        **overrides,
    )


def test_allocate_injects_the_runtime_and_writes_the_control_region(
    start_agent: Any, kube: Kube, tmp_path: Path
) -> None:
    r = start_pool(start_agent, tmp_path, runtime_compute_mode="share")
    lib = tmp_path / "lib"
    assert (lib / "libgpupool.so").read_bytes() == (tmp_path / "image" / "libgpupool.so").read_bytes()
    assert (lib / "ld.so.preload").read_text() == f"{lib}/libgpupool.so\n"
    pod = make_pod("pooled", r.node, [2])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU1, "gpu1-3", 40, 2048), (0, GPU0, "gpu0-9", 25, 1024)]))
    cached(r, "pooled")
    c = allocate(r, sorted(preferred(r, 2))).container_responses[0]
    uid = pod["metadata"]["uid"]
    cdir = tmp_path / "state" / "containers" / uid / "0"
    assert c.envs["GPUPOOL_BACKEND"] == "pool"
    assert c.envs["GPUPOOL_MEMORY_LIMITS"] == "1024,2048"  # per CUDA ordinal: GPU0 then GPU1
    assert c.envs["GPUPOOL_COMPUTE_LIMITS"] == "25,40"  # per device: no minimum needed
    assert c.envs["GPUPOOL_COMPUTE_MODE"] == "share"
    assert c.envs["GPUPOOL_RUNTIME_DIR"] == "/run/gpupool"
    assert c.envs["GPUPOOL_GPU_DIR"] == "/run/gpupool-gpus"
    assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
        (str(lib), str(lib), True),
        ("/etc/ld.so.preload", f"{lib}/ld.so.preload", True),
        ("/run/gpupool", str(cdir), False),
        ("/run/gpupool-gpus/0", str(tmp_path / "state" / "gpus" / GPU0), False),
        ("/run/gpupool-gpus/1", str(tmp_path / "state" / "gpus" / GPU1), False),
    ]
    data = (cdir / "control").read_bytes()
    assert data == regions.pack_control([regions.DeviceLimit(1024, 25), regions.DeviceLimit(2048, 40)], "share", 1)
    assert json.loads((cdir / "owner.json").read_text()) == {
        "container": "0",
        "namespace": "default",
        "pod": "pooled",
        "uid": uid,
    }
    # the pod leaves the node: its regions go
    kube.request("DELETE", "/api/v1/namespaces/default/pods/pooled")
    wait_for(lambda: not cdir.parent.exists(), timeout=10)


@pytest.mark.parametrize(
    ("node_mode", "pod_mode", "expected"),
    [
        ("ceiling", "share", "share"),
        ("share", "ceiling", "ceiling"),
        ("share", None, "share"),
        ("ceiling", "x", "ceiling"),
    ],
)
def test_the_pods_compute_mode_wins_over_the_nodes_default(
    start_agent: Any, kube: Kube, tmp_path: Path, node_mode: str, pod_mode: str | None, expected: str
) -> None:
    node = f"node-mode-{node_mode}-{pod_mode}".lower()
    r = start_pool(start_agent, tmp_path, node=node, runtime_compute_mode=node_mode)
    pod = make_pod(node, r.node, [1])
    if pod_mode is not None:  # "x": a pod created around the webhook; the node's default applies
        pod["metadata"]["annotations"][resources.COMPUTE_MODE] = pod_mode
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0, "gpu0-4", 30, 512)]))
    cached(r, node)
    c = allocate(r, ["gpu0-4"]).container_responses[0]
    assert c.envs["GPUPOOL_COMPUTE_MODE"] == expected
    cdir = tmp_path / "state" / "containers" / pod["metadata"]["uid"] / "0"
    assert (cdir / "control").read_bytes() == regions.pack_control([regions.DeviceLimit(512, 30)], expected, 1)


def test_other_backends_write_no_region(start_agent: Any, kube: Kube, tmp_path: Path) -> None:
    r = start_agent(backend="mps", runtime_state_dir=str(tmp_path / "state"))
    pod = make_pod("plain", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0, "gpu0-1", 50, 1000)]))
    cached(r, "plain")
    c = allocate(r, ["gpu0-1"]).container_responses[0]
    assert not [k for k in c.envs if k.startswith(("GPUPOOL_MEMORY", "GPUPOOL_COMPUTE", "GPUPOOL_RUNTIME"))]
    assert not (tmp_path / "state").exists()


def test_control_generation_grows_on_every_write(tmp_path: Path) -> None:
    from deviceplugin.allocate import ContainerPlan
    from deviceplugin.runtime_host import RuntimeHost
    from deviceplugin.settings import Backend, DevicePluginSettings
    from gpupool.assignment import SliceRecord

    options: dict[str, Any] = {"node_name": "n", "backend": Backend.POOL, "runtime_state_dir": str(tmp_path)}
    settings = DevicePluginSettings(**options)
    host = RuntimeHost(settings)
    record = SliceRecord(container=0, gpu=GPU0, node="n", slot="gpu0-0", compute=30, memory_mib=4096)
    plan = ContainerPlan("uid1", "ns/p", "init:0", ("gpu0-0",), (record,), "n", "exact")
    host.prepare(plan, {GPU0: 0})
    host.prepare(plan, {GPU0: 0})
    cdir = Path(regions.container_dir(str(tmp_path), "uid1", "init:0"))
    assert cdir.name == "init-0"
    assert regions.read_control_generation(cdir) == 2
    (cdir / "control").write_bytes(b"junk")
    assert regions.read_control_generation(cdir) == 0


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_usage_metrics_from_a_real_runtime_process(start_agent: Any, kube: Kube, tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "runtime"), "test-bin"], check=True, timeout=300)
    build = ROOT / "runtime" / "build"
    r = start_pool(start_agent, tmp_path, usage_interval_seconds=0.1)
    pod = make_pod("metered", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0, "gpu0-2", 30, 1)]))
    cached(r, "metered")
    c = allocate(r, ["gpu0-2"]).container_responses[0]
    mounts = {m.container_path: m.host_path for m in c.mounts}
    env = runtime_process_env(c, Path(mounts["/run/gpupool-gpus/0"]).parent.parent / "fake-gpus")
    out = subprocess.run(
        [str(build / "gpuprog")],
        input="alloc v2 1048576\nalloc v2 1\nlaunch 20 100\nlaunch 1 1\ninfo\n",  # the 2nd launch charges the 1st batch
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split("\n")
    assert out[:5] == ["ok 0", "err 2", "ok", "ok", "info 0 1048576"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{r.agent.http.port}/metrics", timeout=5).read().decode()
    labels = 'container="0",device="0",namespace="default",pod="metered"'
    assert f"gpupool_container_gpu_memory_limit_bytes{{{labels}}} 1.048576e+06" in body
    assert f"gpupool_container_gpu_compute_limit_percent{{{labels}}} 30.0" in body
    assert f"gpupool_container_gpu_memory_used_bytes{{{labels}}} 0.0" in body  # the process has exited
    prefix = f"gpupool_container_gpu_busy_seconds_total{{{labels}}}"
    busy = [line for line in body.splitlines() if line.startswith(prefix)]
    assert busy and float(busy[0].split()[-1]) > 0

    # and per pod in the GPUNode status, with a heartbeat
    def usage() -> list[dict[str, Any]]:
        return list((((kube.get_gpunode(r.node) or {}).get("status") or {}).get("usage") or {}).get("pods") or [])

    wait_for(lambda: [(p["name"], p["memoryUsedMiB"], p["memoryLimitMiB"]) for p in usage()] == [("metered", 0, 1)])
