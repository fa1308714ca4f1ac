"""The managed mps backend: one MPS control daemon per GPU, supervised, against a fake control binary."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from deviceplugin.kube import Kube
from deviceplugin.mps import MpsSupervisor
from e2e.polling import wait_for
from gpupool.inventory import GPUInfo
from tests.deviceplugin import fake_mps
from tests.deviceplugin.helpers import assignment_for, make_pod, put_pod
from tests.deviceplugin.test_plugin import GPU0, GPU1, allocate, cached


@pytest.fixture()
def mps_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mps"))  # short: the daemon's unix socket path is limited to 108 bytes
    dirs = {"root": root, "pipes": root / "p", "logs": root / "l", "record": root / "record"}
    dirs["control"] = fake_mps.install(root)
    monkeypatch.setenv("FAKE_MPS_RECORD", str(dirs["record"]))
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


def records(dirs: dict[str, Path]) -> list[str]:
    try:
        return dirs["record"].read_text().splitlines()
    except FileNotFoundError:
        return []


def gpu(uuid: str, index: int) -> GPUInfo:
    return GPUInfo(uuid=uuid, index=index, model="A100", memory_mib=81920)


def listening(sup: MpsSupervisor, uuid: str) -> bool:
    """The daemon the supervisor started last for `uuid` is up and listening (its pid file names it)."""
    d = sup.daemons.get(uuid)
    if d is None or d.process is None or d.process.poll() is not None:
        return False
    try:
        return (d.pipe_dir / "nvidia-cuda-mps-control.pid").read_text().strip() == str(d.process.pid)
    except FileNotFoundError:
        return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(dirs: dict[str, Path], clock: Clock | None = None, **kw: Any) -> MpsSupervisor:
    return MpsSupervisor(str(dirs["control"]), str(dirs["pipes"]), str(dirs["logs"]), clock=clock or Clock(), **kw)


def test_one_daemon_per_gpu_with_its_own_directories(mps_dirs: dict[str, Path]) -> None:
    sup = supervisor(mps_dirs)
    try:
        sup.update([gpu(GPU0, 0), gpu(GPU1, 1)])
        wait_for(lambda: listening(sup, GPU0) and listening(sup, GPU1))
        starts = sorted(line for line in records(mps_dirs) if line.startswith("start"))
        assert starts == [f"start {u} {mps_dirs['pipes'] / u} {mps_dirs['logs'] / u}" for u in (GPU0, GPU1)]
        assert sup.check() == {GPU0: True, GPU1: True}
        assert f"cmd {GPU0} get_server_list" in records(mps_dirs)
        assert sup.serving(GPU0) and sup.serving(GPU1)
        # a GPU leaves the node: its daemon is told to quit
        sup.update([gpu(GPU0, 0)])
        assert f"cmd {GPU1} quit" in records(mps_dirs) and f"exit {GPU1} 0" in records(mps_dirs)
        assert not sup.serving(GPU1) and sup.serving(GPU0)
    finally:
        sup.stop()
    assert f"exit {GPU0} 0" in records(mps_dirs)
    assert not sup.daemons


def test_a_crashed_daemon_is_restarted_after_a_growing_backoff(mps_dirs: dict[str, Path]) -> None:
    clock = Clock()
    restarts: list[str] = []
    health: list[tuple[str, bool]] = []
    sup = supervisor(mps_dirs, clock, on_restart=restarts.append, on_health=lambda g, up: health.append((g, up)))
    pipe = mps_dirs["pipes"] / GPU0
    try:
        sup.update([gpu(GPU0, 0)])
        wait_for(lambda: listening(sup, GPU0))
        assert sup.check() == {GPU0: True}
        (pipe / "crash").touch()
        wait_for(lambda: f"exit {GPU0} 3" in records(mps_dirs))
        wait_for(lambda: not sup.serving(GPU0))
        clock.now += 0.5  # within the first backoff (1 s): not started again yet
        assert sup.check() == {GPU0: False}
        assert restarts == [] and health == [(GPU0, True), (GPU0, False)]
        (pipe / "crash").unlink()
        clock.now += 0.6
        sup.check()  # restarts it
        assert restarts == [GPU0]
        wait_for(lambda: listening(sup, GPU0))
        assert sup.check() == {GPU0: True}
        assert [line for line in records(mps_dirs) if line.startswith("start")] == [
            f"start {GPU0} {pipe} {mps_dirs['logs'] / GPU0}"
        ] * 2
        # it fails to start from now on: each new try waits twice as long (2 s, then 4 s)
        (pipe / "fail-start").touch()
        (pipe / "crash").touch()
        wait_for(lambda: not sup.serving(GPU0))
        (pipe / "crash").unlink()
        clock.now += 1.9
        sup.check()
        assert restarts == [GPU0]
        clock.now += 0.2
        sup.check()
        assert restarts == [GPU0, GPU0]
        wait_for(lambda: records(mps_dirs)[-1] == f"exit {GPU0} 1")
        clock.now += 3.9
        sup.check()
        assert len(restarts) == 2
        clock.now += 0.2
        sup.check()
        assert len(restarts) == 3
        process = sup.daemons[GPU0].process
        assert process is not None
        wait_for(lambda: process.poll() is not None)
        sup.check()
        assert sup.daemons[GPU0].last_problem == "exited with status 1"
    finally:
        sup.stop()


def test_a_daemon_that_stops_answering_is_replaced(mps_dirs: dict[str, Path]) -> None:
    clock = Clock()
    sup = supervisor(mps_dirs, clock, command_timeout_s=0.3, quit_wait_s=0.3)
    pipe = mps_dirs["pipes"] / GPU0
    try:
        sup.update([gpu(GPU0, 0)])
        wait_for(lambda: listening(sup, GPU0))
        first = sup.daemons[GPU0].process
        assert first is not None
        (pipe / "mute").touch()
        clock.now += 5
        assert sup.check() == {GPU0: False}  # stopped (SIGTERM after `quit` went unanswered) and started again
        assert "did not answer get_server_list" in sup.daemons[GPU0].last_problem
        assert first.poll() is not None
        (pipe / "mute").unlink()
        sup.command_timeout_s = 10  # the answer now only has to come (a loaded machine starts the client slowly)
        wait_for(lambda: listening(sup, GPU0))
        assert sup.check() == {GPU0: True}
    finally:
        sup.stop()


def test_a_missing_control_binary_is_reported_not_fatal(mps_dirs: dict[str, Path]) -> None:
    sup = MpsSupervisor(str(mps_dirs["root"] / "absent"), str(mps_dirs["pipes"]), str(mps_dirs["logs"]), clock=Clock())
    sup.update([gpu(GPU0, 0)])
    assert sup.check() == {GPU0: False}
    assert "cannot run" in sup.daemons[GPU0].last_problem
    sup.stop()


def start_managed(start_agent: Any, mps_dirs: dict[str, Path], **kw: Any) -> Any:
    r = start_agent(
        backend="mps",
        mps_managed=True,
        mps_control=str(mps_dirs["control"]),
        mps_pipe_dir=str(mps_dirs["pipes"]),
        mps_log_dir=str(mps_dirs["logs"]),
        mps_health_interval_seconds=0.1,
        **kw,
    )
    wait_for(lambda: all(listening(r.agent.mps, u) for u in (GPU0, GPU1)))
    return r


def test_allocate_mounts_the_pipe_directory_of_the_containers_gpu(
    mps_dirs: dict[str, Path], start_agent: Any, kube: Kube
) -> None:  # mps_dirs first: torn down after the agent stopped its daemons
    r = start_managed(start_agent, mps_dirs)
    pod = make_pod("mps-one", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU1, "gpu1-2", 40, 3000)]))
    cached(r, "mps-one")
    c = allocate(r, ["gpu1-2"]).container_responses[0]
    assert c.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/run/gpupool-mps"
    assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=3000M"
    assert c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
        ("/run/gpupool-mps", str(mps_dirs["pipes"] / GPU1), False)
    ]


def test_allocate_refuses_several_gpus_and_a_gpu_whose_daemon_is_down(
    mps_dirs: dict[str, Path], start_agent: Any, kube: Kube
) -> None:  # mps_dirs first: torn down after the agent stopped its daemons
    r = start_managed(start_agent, mps_dirs)
    two = make_pod("mps-two", r.node, [2])
    put_pod(kube, two, assignment_for(two, r.node, [(0, GPU0, "gpu0-1", 40, 1000), (0, GPU1, "gpu1-1", 40, 1000)]))
    cached(r, "mps-two")
    with pytest.raises(grpc.RpcError) as info:
        allocate(r, ["gpu0-1", "gpu1-1"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one local GPU per container" in str(info.value.details()) and "pool backend" in str(info.value.details())

    (mps_dirs["pipes"] / GPU0 / "fail-start").touch()
    (mps_dirs["pipes"] / GPU0 / "crash").touch()
    wait_for(lambda: not r.agent.mps.serving(GPU0))
    down = make_pod("mps-down", r.node, [1])
    put_pod(kube, down, assignment_for(down, r.node, [(0, GPU0, "gpu0-3", 40, 1000)]))
    cached(r, "mps-down")
    with pytest.raises(grpc.RpcError) as info:
        allocate(r, ["gpu0-3"])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"MPS control daemon of GPU {GPU0} is not running" in str(info.value.details())
    # the daemon comes back (first backoff 1 s): the same container is served
    (mps_dirs["pipes"] / GPU0 / "fail-start").unlink()
    (mps_dirs["pipes"] / GPU0 / "crash").unlink()
    wait_for(lambda: r.agent.mps.serving(GPU0), timeout=20)
    assert allocate(r, ["gpu0-3"]).container_responses[0].envs["CUDA_MPS_PIPE_DIRECTORY"] == "/run/gpupool-mps"
    restarts = r.agent.metrics.mps_restarts.labels(GPU0)._value.get()
    assert restarts >= 1
    r.agent.mps.stop()
    assert {f"exit {GPU0} 0", f"exit {GPU1} 0"} <= set(records(mps_dirs))
