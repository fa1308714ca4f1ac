"""A fake `nvidia-cuda-mps-control` for the managed mps backend's tests: the boundary only, no GPU.

Run as `fake -f` it is a foreground control daemon: it listens on `$CUDA_MPS_PIPE_DIRECTORY/control` (a unix
socket), writes `nvidia-cuda-mps-control.pid` there and appends what it does to `$FAKE_MPS_RECORD`, one line
each: `start <CUDA_VISIBLE_DEVICES> <pipe dir> <log dir>`, `cmd <CUDA_VISIBLE_DEVICES> <command>`,
`exit <CUDA_VISIBLE_DEVICES> <status>`. Run without arguments it is the client: stdin goes to the daemon, its
answer to stdout; no daemon = exit 1 with NVIDIA's message. Faults, by files in the pipe directory: `fail-start`
(the daemon exits 1 at once), `crash` (a running daemon exits 3 within 50 ms), `mute` (it stops answering).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path


def record(line: str) -> None:
    path = os.environ.get("FAKE_MPS_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def daemon() -> int:
    pipe = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    record(f"start {gpu} {pipe} {os.environ.get('CUDA_MPS_LOG_DIRECTORY', '')}")
    if (pipe / "fail-start").exists():
        record(f"exit {gpu} 1")
        return 1
    sock_path = pipe / "control"
    sock_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    server.settimeout(0.05)
    (pipe / "nvidia-cuda-mps-control.pid").write_text(f"{os.getpid()}\n")
    try:
        while True:
            if (pipe / "crash").exists():
                record(f"exit {gpu} 3")
                return 3
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                command = conn.recv(4096).decode().strip()
                record(f"cmd {gpu} {command}")
                if (pipe / "mute").exists():
                    time.sleep(30)
                    continue
                if command == "quit":
                    conn.sendall(b"")
                    record(f"exit {gpu} 0")
                    return 0
                conn.sendall(b"" if command == "get_server_list" else b"ok\n")
    finally:
        server.close()
        sock_path.unlink(missing_ok=True)


def client() -> int:
    pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(pipe / "control"))
    except OSError:
        print("Cannot find MPS control daemon process", file=sys.stderr)
        return 1
    with conn:
        conn.sendall(sys.stdin.read().encode())
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        sys.stdout.write(conn.recv(4096).decode())
    return 0


def install(directory: Path) -> Path:
    """Write an executable `nvidia-cuda-mps-control` into `directory` that runs this module."""
    path = directory / "nvidia-cuda-mps-control"
    path.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(path)!r}\n"
                    f"runpy.run_path({__file__!r}, run_name='__main__')\n")  # fmt: skip
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(daemon() if sys.argv[1:] == ["-f"] else client())
