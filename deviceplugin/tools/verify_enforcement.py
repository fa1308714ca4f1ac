"""Show, on a real GPU node, whether the env that Allocate returns enforces a slice's memory limit.

Self-contained (stdlib + ctypes against libcuda.so.1; no PyTorch, no internet). Two roles:

``probe`` (the "container"): creates a CUDA context on device 0 and allocates ``--chunk-mib`` blocks with
``cuMemAlloc`` until it fails or ``--max-mib`` is reached, then prints one JSON line
``{"allocated_mib": N, "stopped_by": "<CUDA error name>" | "max", "env": {...}}``.

``run`` (the "node"): builds the exact env `deviceplugin.allocate.build_response` produces for a one-slice
container (``--memory-mib``, ``--compute``, GPU 0's uuid), then runs ``probe`` as a child with that env for
each backend asked (default ``none`` and ``mps``):

- ``none``: no limit; the probe should reach ``--max-mib`` (or the card's free memory).
- ``mps``: starts an MPS control daemon (``nvidia-cuda-mps-control -d``) with private pipe/log directories
  unless ``--no-start-mps``, runs the probe as an MPS client with ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` and
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, then stops the daemon (``echo quit``). The probe should stop near
  ``--memory-mib`` with an out-of-memory error.
- ``hami-core``: only meaningful where libvgpu.so is installed (``--hami-lib``); it is LD_PRELOADed.

Prints a table and, with ``--json``, one JSON object; exit status 0 when every verdict is as expected
(``none`` not limited, ``mps``/``hami-core`` limited within ``--tolerance-mib``), 1 otherwise, 2 when no GPU.

    python -m deviceplugin.tools.verify_enforcement run --memory-mib 2048 --compute 30
    python deviceplugin/tools/verify_enforcement.py run --backends none,mps --json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CUDA_SUCCESS = 0


def _libcuda() -> Any:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _error_name(cuda: Any, code: int) -> str:
    ptr = ctypes.c_char_p()
    if cuda.cuGetErrorName(code, ctypes.byref(ptr)) == CUDA_SUCCESS and ptr.value:
        return ptr.value.decode()
    return f"CUDA error {code}"


def probe(chunk_mib: int, max_mib: int) -> dict[str, Any]:
    """Allocate device memory on device 0 until failure; report how far it got."""
    watched = sorted(k for k in os.environ if k.startswith(("CUDA_", "NVIDIA_", "GPUPOOL_", "LD_PRELOAD")))
    env = {k: os.environ[k] for k in watched}
    cuda = _libcuda()
    if cuda is None:
        return {"error": "libcuda.so.1 not found (no NVIDIA driver?)", "env": env}
    rc = cuda.cuInit(0)
    if rc != CUDA_SUCCESS:
        return {"error": f"cuInit: {_error_name(cuda, rc)}", "env": env}
    device = ctypes.c_int()
    rc = cuda.cuDeviceGet(ctypes.byref(device), 0)
    if rc != CUDA_SUCCESS:
        return {"error": f"cuDeviceGet: {_error_name(cuda, rc)}", "env": env}
    context = ctypes.c_void_p()
    create = getattr(cuda, "cuCtxCreate_v2", None) or cuda.cuCtxCreate
    rc = create(ctypes.byref(context), 0, device)
    if rc != CUDA_SUCCESS:
        return {"error": f"cuCtxCreate: {_error_name(cuda, rc)}", "env": env}
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    (getattr(cuda, "cuMemGetInfo_v2", None) or cuda.cuMemGetInfo)(ctypes.byref(free), ctypes.byref(total))
    alloc = getattr(cuda, "cuMemAlloc_v2", None) or cuda.cuMemAlloc
    pointers = []
    allocated = 0
    stopped_by = "max"
    while allocated + chunk_mib <= max_mib:
        ptr = ctypes.c_uint64()
        rc = alloc(ctypes.byref(ptr), ctypes.c_size_t(chunk_mib * 2**20))
        if rc != CUDA_SUCCESS:
            stopped_by = _error_name(cuda, rc)
            break
        pointers.append(ptr)
        allocated += chunk_mib
    free_fn = getattr(cuda, "cuMemFree_v2", None) or cuda.cuMemFree
    for ptr in pointers:
        free_fn(ptr)
    (getattr(cuda, "cuCtxDestroy_v2", None) or cuda.cuCtxDestroy)(context)
    return {
        "allocated_mib": allocated,
        "stopped_by": stopped_by,
        "reported_free_mib": free.value // 2**20,
        "reported_total_mib": total.value // 2**20,
        "env": env,
    }


def gpu0_uuid() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run(
        [smi, "--query-gpu=uuid", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() or None


def allocate_env(
    backend: str, uuid: str, memory_mib: int, compute: int, pipe_dir: str, hami_lib: str
) -> dict[str, str]:
    """The env of the container response, built by the device plugin's own code when importable."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from deviceplugin.allocate import ContainerPlan, build_response
        from deviceplugin.settings import DevicePluginSettings
        from gpupool.assignment import SliceRecord

        settings = DevicePluginSettings(
            node_name="verify", backend=backend, mps_pipe_dir=pipe_dir, hami_lib_dir=hami_lib
        )
        record = SliceRecord(
            container=0, gpu=uuid, node="verify", compute=compute, memory_mib=memory_mib, slot="gpu0-0"
        )
        plan = ContainerPlan("uid", "verify/probe", "0", ("gpu0-0",), (record,), "verify", "exact")
        return dict(build_response(plan, settings, {uuid: 0}, {}).envs)
    except ImportError:  # copied alone onto a machine: the same env, written out
        env = {"NVIDIA_VISIBLE_DEVICES": uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if backend == "mps":
            env |= {
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(compute),
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_mib}M",
                "CUDA_MPS_PIPE_DIRECTORY": pipe_dir,
            }
        elif backend == "hami-core":
            env |= {"CUDA_DEVICE_MEMORY_LIMIT_0": f"{memory_mib}m", "CUDA_DEVICE_SM_LIMIT": str(compute)}
        return env


def run_probe(env: dict[str, str], chunk_mib: int, max_mib: int) -> dict[str, Any]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_MPS", "CUDA_DEVICE_"))} | env
    # outside a container nothing consumes NVIDIA_VISIBLE_DEVICES; pin the same GPU for CUDA directly
    child_env.setdefault("CUDA_VISIBLE_DEVICES", env.get("NVIDIA_VISIBLE_DEVICES", "0"))
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "probe",
            "--chunk-mib",
            str(chunk_mib),
            "--max-mib",
            str(max_mib),
        ],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=300,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"probe exited {out.returncode}: {out.stderr[-2000:]}"}
    return dict(json.loads(lines[-1]))


class MpsDaemon:
    def __init__(self, pipe_dir: str, log_dir: str) -> None:
        self.env = os.environ | {"CUDA_MPS_PIPE_DIRECTORY": pipe_dir, "CUDA_MPS_LOG_DIRECTORY": log_dir}
        self.log_dir = log_dir
        self.control = shutil.which("nvidia-cuda-mps-control")

    def start(self) -> str | None:
        if self.control is None:
            return "nvidia-cuda-mps-control not found"
        out = subprocess.run([self.control, "-d"], env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            return f"nvidia-cuda-mps-control -d failed: {out.stderr.strip()}"
        time.sleep(1.0)
        return None

    def stop(self) -> None:
        if self.control is not None:
            subprocess.run(
                [self.control], input="quit\n", env=self.env, capture_output=True, text=True, timeout=30, check=False
            )

    def log_tail(self) -> str:
        path = Path(self.log_dir, "control.log")
        return path.read_text()[-1500:] if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="allocate until failure (run with the env under test)")
    p.add_argument("--chunk-mib", type=int, default=256)
    p.add_argument("--max-mib", type=int, default=16384)
    r = sub.add_parser("run", help="run the probe with each backend's Allocate env and judge")
    r.add_argument("--backends", default="none,mps", help="comma list of none, mps, hami-core")
    r.add_argument("--memory-mib", type=int, default=2048, help="the slice's memory (the limit under test)")
    r.add_argument("--compute", type=int, default=30, help="the slice's compute percent")
    r.add_argument("--chunk-mib", type=int, default=128)
    r.add_argument("--max-mib", type=int, default=8192, help="stop an unlimited probe here")
    r.add_argument("--tolerance-mib", type=int, default=512, help="how far past the limit still counts as enforced")
    r.add_argument("--no-start-mps", action="store_true", help="use an MPS daemon already running on --pipe-dir")
    r.add_argument("--pipe-dir", default="", help="MPS pipe directory (default: a fresh temporary one)")
    r.add_argument("--hami-lib", default="/usr/local/vgpu", help="directory holding libvgpu.so (hami-core)")
    r.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        print(json.dumps(probe(args.chunk_mib, args.max_mib)))
        return 0

    uuid = gpu0_uuid()
    if uuid is None:
        print("no NVIDIA GPU visible (nvidia-smi missing or no GPU 0)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpupool-verify-"))
    pipe_dir = args.pipe_dir or str(work / "pipe")
    Path(pipe_dir).mkdir(parents=True, exist_ok=True)
    (work / "log").mkdir(exist_ok=True)
    results: dict[str, Any] = {"gpu": uuid, "memory_mib": args.memory_mib, "compute": args.compute, "backends": {}}
    ok = True
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        env = allocate_env(backend, uuid, args.memory_mib, args.compute, pipe_dir, args.hami_lib)
        daemon = None
        note = ""
        if backend == "mps" and not args.no_start_mps:
            daemon = MpsDaemon(pipe_dir, str(work / "log"))
            problem = daemon.start()
            if problem:
                results["backends"][backend] = {"error": problem, "env": env}
                ok = False
                continue
        if backend == "hami-core":
            lib = Path(args.hami_lib, "libvgpu.so")
            if not lib.exists():
                results["backends"][backend] = {"error": f"{lib} not found", "env": env}
                ok = False
                continue
            env = env | {"LD_PRELOAD": str(lib)}
        try:
            outcome = run_probe(env, args.chunk_mib, args.max_mib)
        finally:
            if daemon is not None:
                note = daemon.log_tail()
                daemon.stop()
        if "error" in outcome:
            verdict, expected = "error", False
        else:
            limited = (
                outcome["stopped_by"] != "max" and outcome["allocated_mib"] <= args.memory_mib + args.tolerance_mib
            )
            verdict = "limited" if limited else "not limited"
            expected = limited if backend in ("mps", "hami-core") else not limited
        ok = ok and expected
        results["backends"][backend] = outcome | {"verdict": verdict, "as_expected": expected}
        if note and not expected:
            results["backends"][backend]["mps_control_log"] = note
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"GPU {uuid}; slice: {args.memory_mib} MiB, {args.compute} % compute")
        for backend, res in results["backends"].items():
            if "error" in res and "verdict" not in res:
                print(f"  {backend:10s} ERROR {res['error']}")
            else:
                print(
                    f"  {backend:10s} allocated {res.get('allocated_mib', '?')} MiB, stopped by "
                    f"{res.get('stopped_by', res.get('error'))}: {res['verdict']} "
                    f"({'as expected' if res['as_expected'] else 'NOT as expected'})"
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
