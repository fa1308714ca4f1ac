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
- ``pool``: gpupool's runtime (``--pool-lib``, default ``runtime/build/libgpupool.so`` of this checkout, else
  ``/opt/gpupool/libgpupool.so``) LD_PRELOADed, with the region directories in a temporary directory and the
  control region written as the node agent writes it. The probe should stop at ``--memory-mib`` exactly and
  ``cuMemGetInfo`` should report the slice as the total.

With ``--compute-check`` (needs PyTorch with CUDA in this Python), each limiting backend also runs the
``compute`` probe (fp16 matmuls, synchronised, for ``--seconds``): alone with the slice's compute, and two at once
with ``--compute`` and ``100 - --compute``; achieved rates are reported as percent of an unlimited run (``none``).
For ``pool`` they are judged against the targets (``--tolerance-points``); for ``mps``/``hami-core`` they are
reported only (their compute limits are not time shares).

Prints a table and, with ``--json``, one JSON object; exit status 0 when every verdict is as expected
(``none`` not limited, ``mps``/``hami-core`` limited within ``--tolerance-mib``), 1 otherwise, 2 when no GPU.

    python -m deviceplugin.tools.verify_enforcement run --memory-mib 2048 --compute 30
    python deviceplugin/tools/verify_enforcement.py run --backends none,mps --json
    python -m deviceplugin.tools.verify_enforcement run --backends none,pool --compute-check
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


def compute_probe(seconds: float, size: int) -> dict[str, Any]:
    """fp16 matmuls on device 0, synchronised each time, for `seconds`; iterations per second (PyTorch)."""
    try:
        import torch
    except ImportError:
        return {"error": "PyTorch not installed"}
    if not torch.cuda.is_available():
        return {"error": "PyTorch sees no CUDA device"}
    a = torch.randn(size, size, device="cuda", dtype=torch.float16)
    b = torch.randn(size, size, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    done = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        a @ b
        torch.cuda.synchronize()
        done += 1
    return {"rate": done / (time.monotonic() - start)}


def default_pool_lib() -> str:
    built = Path(__file__).resolve().parents[2] / "runtime" / "build" / "libgpupool.so"
    return str(built) if built.exists() else "/opt/gpupool/libgpupool.so"


def pool_env(env: dict[str, str], work: Path, name: str, memory_mib: int, compute: int, mode: str) -> dict[str, str]:
    """Point the pool runtime at private region directories (the Allocate env names the container's paths)."""
    directory = work / "pool" / name
    directory.mkdir(parents=True, exist_ok=True)
    (work / "pool" / "gpus" / "0").mkdir(parents=True, exist_ok=True)
    try:
        from deviceplugin.runtime_regions import DeviceLimit, write_control

        write_control(directory, [DeviceLimit(memory_mib, compute)], mode, 1)
    except ImportError:  # the runtime then holds the env limits (and says the control region is missing)
        pass
    return env | {
        "GPUPOOL_RUNTIME_DIR": str(directory),
        "GPUPOOL_GPU_DIR": str(work / "pool" / "gpus"),
        "GPUPOOL_MEMORY_LIMITS": str(memory_mib),
        "GPUPOOL_COMPUTE_LIMITS": str(compute),
        "GPUPOOL_COMPUTE_MODE": mode,
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
        elif backend == "pool":
            env |= {"GPUPOOL_MEMORY_LIMITS": str(memory_mib), "GPUPOOL_COMPUTE_LIMITS": str(compute)}
        return env


def _child_env(env: dict[str, str]) -> dict[str, str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_MPS", "CUDA_DEVICE_", "GPUPOOL_"))}
    child_env |= env
    # outside a container nothing consumes NVIDIA_VISIBLE_DEVICES; pin the same GPU for CUDA directly (by uuid)
    child_env.setdefault("CUDA_VISIBLE_DEVICES", env.get("NVIDIA_VISIBLE_DEVICES", "0"))
    return child_env


def _probe_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _last_json(stdout: str, returncode: int, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"probe exited {returncode}: {stderr[-2000:]}"}
    return dict(json.loads(lines[-1]))


def run_probe(env: dict[str, str], chunk_mib: int, max_mib: int) -> dict[str, Any]:
    out = subprocess.run(
        _probe_cmd("probe", "--chunk-mib", str(chunk_mib), "--max-mib", str(max_mib)),
        capture_output=True,
        text=True,
        env=_child_env(env),
        timeout=300,
    )
    return _last_json(out.stdout, out.returncode, out.stderr)


def run_compute(envs: list[dict[str, str]], seconds: float, size: int) -> list[dict[str, Any]]:
    """The compute probe in one process per env, all at once."""
    procs = [
        subprocess.Popen(
            _probe_cmd("compute", "--seconds", str(seconds), "--size", str(size)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(env),
        )
        for env in envs
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 300)
        results.append(_last_json(out, p.returncode, err))
    return results


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
    c = sub.add_parser("compute", help="matmul throughput on device 0 (PyTorch; run with the env under test)")
    c.add_argument("--seconds", type=float, default=10.0)
    c.add_argument("--size", type=int, default=4096)
    r = sub.add_parser("run", help="run the probe with each backend's Allocate env and judge")
    r.add_argument("--backends", default="none,mps", help="comma list of none, mps, hami-core, pool")
    r.add_argument("--memory-mib", type=int, default=2048, help="the slice's memory (the limit under test)")
    r.add_argument("--compute", type=int, default=30, help="the slice's compute percent")
    r.add_argument("--chunk-mib", type=int, default=128)
    r.add_argument("--max-mib", type=int, default=8192, help="stop an unlimited probe here")
    r.add_argument("--tolerance-mib", type=int, default=512, help="how far past the limit still counts as enforced")
    r.add_argument("--no-start-mps", action="store_true", help="use an MPS daemon already running on --pipe-dir")
    r.add_argument("--pipe-dir", default="", help="MPS pipe directory (default: a fresh temporary one)")
    r.add_argument("--hami-lib", default="/usr/local/vgpu", help="directory holding libvgpu.so (hami-core)")
    r.add_argument("--pool-lib", default=default_pool_lib(), help="libgpupool.so (pool)")
    r.add_argument("--pool-mode", default="ceiling", choices=["ceiling", "share"], help="compute mode (pool)")
    r.add_argument("--uuid", default="", help="GPU 0's uuid (default: from nvidia-smi)")
    r.add_argument("--compute-check", action="store_true", help="also measure compute shares (PyTorch)")
    r.add_argument("--seconds", type=float, default=10.0, help="length of each compute run")
    r.add_argument("--size", type=int, default=4096, help="matmul size of the compute probe")
    r.add_argument("--tolerance-points", type=float, default=10.0, help="compute share tolerance (pool)")
    r.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        print(json.dumps(probe(args.chunk_mib, args.max_mib)))
        return 0
    if args.cmd == "compute":
        print(json.dumps(compute_probe(args.seconds, args.size)))
        return 0

    uuid = args.uuid or gpu0_uuid()
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
        if backend == "pool":
            if not Path(args.pool_lib).exists():
                results["backends"][backend] = {"error": f"{args.pool_lib} not found (make -C runtime)", "env": env}
                ok = False
                continue
            env = pool_env(env, work, "memory", args.memory_mib, args.compute, args.pool_mode)
            env |= {"LD_PRELOAD": args.pool_lib}
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
            if backend == "pool":  # exact cap, and cuMemGetInfo reports the slice
                limited = limited and outcome["reported_total_mib"] == args.memory_mib
                limited = limited and args.memory_mib - args.chunk_mib < outcome["allocated_mib"] <= args.memory_mib
            verdict = "limited" if limited else "not limited"
            expected = limited if backend in ("mps", "hami-core", "pool") else not limited
        ok = ok and expected
        results["backends"][backend] = outcome | {"verdict": verdict, "as_expected": expected}
        if note and not expected:
            results["backends"][backend]["mps_control_log"] = note
    if args.compute_check:
        ok = compute_check(args, uuid, work, pipe_dir, results) and ok
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
        for backend, res in results.get("compute", {}).items():
            print(f"  compute {backend:10s} {json.dumps(res)}")
    return 0 if ok else 1


def compute_check(args: Any, uuid: str, work: Path, pipe_dir: str, results: dict[str, Any]) -> bool:
    """Achieved compute, percent of an unlimited run: alone at --compute, and --compute vs 100 - --compute."""
    ok = True
    unlimited = allocate_env("none", uuid, args.memory_mib, 100, pipe_dir, args.hami_lib)
    base = run_compute([unlimited], args.seconds, args.size)
    results["compute"] = {"none": base[0]}
    if "rate" not in base[0]:
        return False
    full = base[0]["rate"]
    other = 100 - args.compute
    for backend in [b.strip() for b in args.backends.split(",") if b.strip() not in ("", "none")]:
        envs = []
        for name, share in (("alone", args.compute), ("a", args.compute), ("b", other)):
            env = allocate_env(backend, uuid, args.memory_mib, share, pipe_dir, args.hami_lib)
            if backend == "pool":
                env = pool_env(env, work, f"compute-{name}", args.memory_mib, share, args.pool_mode)
                env |= {"LD_PRELOAD": args.pool_lib}
            elif backend == "hami-core":
                env |= {"LD_PRELOAD": str(Path(args.hami_lib, "libvgpu.so"))}
            envs.append(env)
        daemon = MpsDaemon(pipe_dir, str(work / "log")) if backend == "mps" and not args.no_start_mps else None
        if daemon is not None and (problem := daemon.start()):
            results["compute"][backend] = {"error": problem}
            ok = False
            continue
        try:
            alone = run_compute(envs[:1], args.seconds, args.size)[0]
            pair = run_compute(envs[1:], args.seconds, args.size)
        finally:
            if daemon is not None:
                daemon.stop()
        rates = [r.get("rate") for r in (alone, *pair)]
        if any(r is None for r in rates):
            results["compute"][backend] = {"error": [alone, *pair]}
            ok = False
            continue
        got = [100.0 * float(r) / full for r in rates if r is not None]
        res: dict[str, Any] = {"alone": got[0], "pair": got[1:], "targets": [args.compute, args.compute, other]}
        if backend == "pool":
            alone_target = 100 if args.pool_mode == "share" else args.compute
            errors = [abs(got[0] - alone_target), abs(got[1] - args.compute), abs(got[2] - other)]
            res["as_expected"] = max(errors) <= args.tolerance_points
            ok = ok and res["as_expected"]
        results["compute"][backend] = res
    return ok


if __name__ == "__main__":
    sys.exit(main())
