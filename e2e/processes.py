"""Process supervision for the local cluster: start by argv, wait for readiness, stop by PID, keep the logs.

Every process gets a new session (a terminal's Ctrl-C does not reach it, and ``python -m e2e.cluster up`` can
exit and leave it running), one log file ``<log_dir>/<name>.log`` appended to across restarts, and is stopped
with SIGTERM, then SIGKILL after a timeout, by its own PID only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ClusterError(RuntimeError):
    """A process of the local cluster failed to start or become ready."""


#: ports `free_port` handed out in this process (never handed out twice)
_HANDED_OUT: set[int] = set()
_PICK = random.Random(os.getpid())


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server about to start, bound and released here.

    Picked below the kernel's ephemeral range: a port from that range (what binding port 0 gives) can be taken
    by any outgoing connection before the server binds it, and a burst of thousands of connections (the benches,
    kube-scheduler's to the extender) made kube-controller-manager fail with "address already in use" in CI."""
    low, _ = _ephemeral_range()
    lowest = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = _PICK.randrange(lowest, low) if low > lowest else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise ClusterError(f"no free TCP port on 127.0.0.1 in {lowest}-{low - 1}")


@dataclass
class ManagedProcess:
    """A process started by the cluster; its stdout+stderr go to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str] | None
    log_path: Path
    ready_url: str | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    ready_check: Callable[[], bool] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self.pid is None:
            return False
        # Re-attached from cluster.json: only a live process running our argv[0] counts (PIDs get reused).
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(cmdline) and cmdline[0].decode(errors="replace") == self.argv[0]

    def state(self) -> dict[str, object]:
        """What ``cluster.json`` records of this process (enough to stop or restart it from another shell)."""
        return {
            "name": self.name,
            "pid": self.pid,
            "argv": self.argv,
            "env": self.env,
            "log": str(self.log_path),
            "ready_url": self.ready_url,
            "cwd": str(self.cwd) if self.cwd else None,
        }

    @classmethod
    def from_state(cls, p: Mapping[str, object]) -> ManagedProcess:
        """The inverse of :meth:`state` (no Popen: liveness then goes by /proc)."""
        env, cwd, pid, argv = p.get("env"), p.get("cwd"), p.get("pid"), p.get("argv")
        if not isinstance(argv, list):
            raise ClusterError(f"cluster.json: process {p.get('name')!r} has no argv list")
        return cls(
            name=str(p["name"]),
            argv=[str(a) for a in argv],
            env=dict(env) if isinstance(env, dict) else None,
            log_path=Path(str(p["log"])),
            ready_url=str(p["ready_url"]) if p.get("ready_url") else None,
            cwd=Path(str(cwd)) if cwd else None,
            pid=int(pid) if isinstance(pid, int) else None,
        )


def tail(path: Path, lines: int) -> str:
    """The last *lines* lines of a log file (or why it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * lines))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.splitlines()[-lines:])


class Supervisor:
    """The processes of one cluster, in start order. *base_env* is laid under every process's own env;
    *probe* answers a ready URL; *on_change* runs after each start (the cluster saves its state there)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        base_env: Callable[[], Mapping[str, str]],
        probe: Callable[[str], bool],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.log_dir = log_dir
        self.base_env = base_env
        self.probe = probe
        self.on_change = on_change
        self.processes: dict[str, ManagedProcess] = {}  # insertion order = start order
        self.detach = False  # True: leave the processes running when the interpreter exits
        self._atexit_registered = False

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        *,
        ready_check: Callable[[], bool] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ManagedProcess:
        """Start *argv* as process *name* (not waiting for it); refuses a name that is still running."""
        if name in self.processes and self.processes[name].alive():
            raise ClusterError(f"process {name!r} is already running (pid {self.processes[name].pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(
            name=name,
            argv=[str(a) for a in argv],
            env=dict(env) if env is not None else None,
            log_path=self.log_dir / f"{name}.log",
            ready_url=ready_url,
            cwd=Path(cwd) if cwd is not None else None,
            ready_check=ready_check,
        )
        self.spawn(proc)
        self.processes[name] = proc
        self.on_change()
        return proc

    def spawn(self, proc: ManagedProcess) -> None:
        """(Re)start *proc* from its argv/env/cwd, appending to its log."""
        full_env = dict(os.environ)
        full_env.update(self.base_env())
        if proc.env:
            full_env.update(proc.env)
        with proc.log_path.open("ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"==== {stamp} start {proc.name}: {' '.join(proc.argv)}\n".encode())
            log.flush()
            proc.popen = subprocess.Popen(
                proc.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=proc.cwd,
                start_new_session=True,
            )
        proc.pid = proc.popen.pid
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        """Poll the readiness of process *name* (its ready_url and/or ready_check); raises
        :class:`ClusterError` with the log tail if it exits first or is not ready in *timeout* seconds."""
        proc = self.processes[name]
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not proc.alive():
                code = proc.popen.returncode if proc.popen else "?"
                raise ClusterError(
                    f"{name} exited with code {code} before it was ready; log tail:\n" + tail(proc.log_path, 40)
                )
            ok = (proc.ready_url is None or self.probe(proc.ready_url)) and (
                proc.ready_check is None or proc.ready_check()
            )
            if ok:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not ready after {timeout:.0f} s ({proc.ready_url or 'ready_check'}); "
                    f"log tail:\n{tail(proc.log_path, 40)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM process *name* by PID, then SIGKILL after *timeout* seconds. No error if it is gone."""
        proc = self.processes.get(name)
        if proc is None or proc.pid is None:
            return
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                end = time.monotonic() + 5
                while proc.alive() and time.monotonic() < end:
                    time.sleep(0.05)
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)
        with contextlib.suppress(OSError), proc.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} stopped {name}\n".encode())

    def stop_all(self) -> None:
        """Stop every process in reverse start order."""
        for name in reversed(list(self.processes)):
            self.stop(name)

    def log_tails(self, lines: int = 30, names: Iterable[str] | None = None) -> str:
        """The last *lines* of every process log (or of *names*), for test failure reports."""
        out = []
        for n in names or list(self.processes):
            p = self.processes.get(n)
            if p is None:
                continue
            state = "running" if p.alive() else "exited"
            out.append(f"----- {n} (pid {p.pid}, {state}) {p.log_path} -----\n{tail(p.log_path, lines)}")
        return "\n".join(out)

    def _atexit(self) -> None:
        # Only processes we spawned in this interpreter (popen set) are ours to stop at exit.
        if not self.detach and any(p.popen is not None and p.alive() for p in self.processes.values()):
            self.stop_all()
