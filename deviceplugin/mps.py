"""The managed `mps` backend: one NVIDIA MPS control daemon per GPU, run and supervised by the node agent.

Each GPU gets its own pipe and log directory (`<mps-pipe-dir>/<uuid>`, `<mps-log-dir>/<uuid>`) and its own
`nvidia-cuda-mps-control -f` (foreground, so the agent holds the process), started with
`CUDA_VISIBLE_DEVICES=<uuid>`: a daemon that dies takes down the clients of one GPU only. Every
`--mps-health-interval-seconds` the agent checks each daemon (the process is alive and answers
`get_server_list` on its pipe directory); a dead or silent daemon is stopped and started again after a backoff
(1 s doubling to 60 s, back to 1 s once a daemon stayed healthy for a minute). Stopping sends `quit`, then
SIGTERM, then SIGKILL to the daemon's own process group.

The per-client limits are set in the client's environment at Allocate (`deviceplugin.allocate`):
`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` and `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`. docs/runtime.md "Managed MPS".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gpupool.inventory import GPUInfo

log = logging.getLogger(__name__)

#: inside the container: the pipe directory of the daemon of the container's GPU
CONTAINER_PIPE_DIR = "/run/gpupool-mps"

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: a daemon healthy this long has its backoff reset
STABLE_S = 60.0
QUIT_WAIT_S = 5.0
COMMAND_TIMEOUT_S = 5.0


def pipe_dir(root: str, uuid: str) -> str:
    """Host pipe directory of the daemon of GPU `uuid`."""
    return f"{root.rstrip('/')}/{uuid}"


@dataclass
class Daemon:
    """One GPU's control daemon and its supervision state."""

    uuid: str
    pipe_dir: Path
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    next_start: float = 0.0  # monotonic time before which no new start is tried
    healthy: bool = False
    last_problem: str = ""
    log_file: IO[bytes] | None = field(default=None, repr=False)


class MpsSupervisor:
    """Runs one control daemon per GPU of `gpus`, keeps them healthy, and stops them."""

    def __init__(
        self,
        control: str,
        pipe_root: str,
        log_root: str,
        *,
        on_restart: Callable[[str], None] | None = None,
        on_health: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        quit_wait_s: float = QUIT_WAIT_S,
    ) -> None:
        self.control = control
        self.pipe_root = pipe_root
        self.log_root = log_root
        self.daemons: dict[str, Daemon] = {}
        self.on_restart = on_restart
        self.on_health = on_health
        self.clock = clock
        self.command_timeout_s = command_timeout_s
        self.quit_wait_s = quit_wait_s
        self._lock = threading.Lock()

    # --- the set of GPUs ---------------------------------------------------------------------------------

    def update(self, gpus: Sequence[GPUInfo]) -> None:
        """Start daemons for new GPUs, stop those of GPUs that left (unhealthy GPUs keep theirs)."""
        wanted = {g.uuid for g in gpus}
        with self._lock:
            for uuid in sorted(set(self.daemons) - wanted):
                self._stop(self.daemons.pop(uuid))
            for uuid in sorted(wanted - set(self.daemons)):
                d = self.daemons[uuid] = Daemon(
                    uuid, Path(pipe_dir(self.pipe_root, uuid)), Path(pipe_dir(self.log_root, uuid))
                )
                self._start(d)

    def check(self) -> dict[str, bool]:
        """One supervision round: health of every daemon; restart (after its backoff) those that failed."""
        with self._lock:
            return {uuid: self._check(d) for uuid, d in sorted(self.daemons.items())}

    def stop(self) -> None:
        with self._lock:
            for d in self.daemons.values():
                self._stop(d)
            self.daemons.clear()

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """`check` every `interval_s` until `stop`, then stop every daemon."""
        while not stop.wait(interval_s):
            try:
                self.check()
            except Exception:
                log.exception("MPS supervision round failed")
        self.stop()

    # --- one daemon --------------------------------------------------------------------------------------

    def env(self, d: Daemon) -> dict[str, str]:
        return os.environ | {
            "CUDA_VISIBLE_DEVICES": d.uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(d.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(d.log_dir),
        }

    def _start(self, d: Daemon) -> None:
        d.next_start = self.clock() + d.backoff_s
        try:
            d.pipe_dir.mkdir(parents=True, exist_ok=True)
            d.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(d.log_dir / "agent-control.log", "ab")  # noqa: SIM115 (kept open while the daemon runs)
        except OSError as exc:
            d.last_problem = f"cannot create {d.pipe_dir} or {d.log_dir}: {exc}"
            log.error("MPS daemon of GPU %s: %s", d.uuid, d.last_problem)
            return
        try:
            d.process = subprocess.Popen(
                [self.control, "-f"],
                env=self.env(d),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the daemon and its servers
            )
        except OSError as exc:
            out.close()
            d.last_problem = f"cannot run {self.control}: {exc}"
            log.error("MPS daemon of GPU %s: %s (set --mps-control)", d.uuid, d.last_problem)
            return
        d.log_file = out
        d.started_at = self.clock()
        log.info("MPS daemon of GPU %s started (pid %d, pipes %s)", d.uuid, d.process.pid, d.pipe_dir)

    def command(self, d: Daemon, text: str) -> subprocess.CompletedProcess[str]:
        """Send one command line to the daemon (the control binary as a client), as `echo text | control`."""
        return subprocess.run(
            [self.control],
            input=f"{text}\n",
            env=self.env(d),
            capture_output=True,
            text=True,
            timeout=self.command_timeout_s,
            check=False,
        )

    def _problem(self, d: Daemon) -> str:
        if d.process is None:
            return d.last_problem or "not running"
        rc = d.process.poll()
        if rc is not None:
            return f"exited with status {rc}"
        try:
            answer = self.command(d, "get_server_list")
        except subprocess.TimeoutExpired:
            return f"did not answer get_server_list within {self.command_timeout_s:g} s"
        except OSError as exc:
            return f"cannot run {self.control}: {exc}"
        if answer.returncode != 0:
            return f"get_server_list failed ({answer.returncode}): {(answer.stderr or answer.stdout).strip()[:200]}"
        return ""

    def _check(self, d: Daemon) -> bool:
        problem = self._problem(d)
        now = self.clock()
        healthy = not problem
        if healthy:
            if now - d.started_at >= STABLE_S:
                d.backoff_s = BACKOFF_FIRST_S
        else:
            if d.healthy or d.last_problem != problem:
                log.warning("MPS daemon of GPU %s: %s", d.uuid, problem)
            d.last_problem = problem
            if d.process is not None:
                self._stop(d)
            if now >= d.next_start:
                d.restarts += 1
                d.backoff_s = min(d.backoff_s * 2, BACKOFF_MAX_S)
                log.info("MPS daemon of GPU %s: restart %d", d.uuid, d.restarts)
                if self.on_restart is not None:
                    self.on_restart(d.uuid)
                self._start(d)
        if healthy != d.healthy and self.on_health is not None:
            self.on_health(d.uuid, healthy)
        d.healthy = healthy
        return healthy

    def _stop(self, d: Daemon) -> None:
        process, d.process = d.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.command(d, "quit")
            try:
                process.wait(self.quit_wait_s)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGTERM)
                try:
                    process.wait(self.quit_wait_s)
                except subprocess.TimeoutExpired:
                    self._signal(process, signal.SIGKILL)
                    process.wait()
        if process is not None:
            log.info("MPS daemon of GPU %s stopped", d.uuid)
        if d.log_file is not None:
            with contextlib.suppress(OSError):
                d.log_file.close()
            d.log_file = None

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # the group it leads (start_new_session): the daemon and its servers

    def status(self) -> Mapping[str, bool]:
        """GPU uuid -> healthy at the last check."""
        with self._lock:
            return {uuid: d.healthy for uuid, d in self.daemons.items()}

    def serving(self, uuid: str) -> bool:
        """Is the daemon of GPU `uuid` running now (Allocate refuses a GPU whose daemon is not)?"""
        with self._lock:
            d = self.daemons.get(uuid)
            return d is not None and d.process is not None and d.process.poll() is None
