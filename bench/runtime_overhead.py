"""Overhead and share accuracy of gpupool's pooling runtime (runtime/libgpupool.so) against the fake CUDA driver.

- launch / allocation overhead: `gpuprog bench N` (N zero-length kernel launches, N cuMemAlloc+cuMemFree pairs,
  each timed) with and without the runtime preloaded; the overhead is the difference of the percentiles.
- share error: 2, 3 and 4 containers spinning on one fake GPU at once (targets 30/70, 20/30/50, 10/20/30/40), in
  `ceiling` and `share` modes; the largest |achieved - target| in points.

    make -C runtime test-bin && .venv/bin/python bench/runtime_overhead.py [--launches 200000] [--json OUT.json]

Reports, never asserts (DESIGN.md §9).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deviceplugin.runtime_regions import DeviceLimit, write_control  # noqa: E402

BUILD = ROOT / "runtime" / "build"
TARGETS = {2: [30, 70], 3: [20, 30, 50], 4: [10, 20, 30, 40]}


def base_env(root: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_LIBRARY_PATH": str(BUILD / "fake"),
        "FAKECUDA_STATE": str(root / "fakecuda.state"),
    }


def container_env(root: Path, name: str, memory_mib: int, compute: int, mode: str) -> dict[str, str]:
    directory = root / name
    directory.mkdir()
    write_control(directory, [DeviceLimit(memory_mib, compute)], mode, 1)  # as the node agent does at Allocate
    (root / "gpus" / "0").mkdir(parents=True, exist_ok=True)
    return base_env(root) | {
        "LD_PRELOAD": str(BUILD / "libgpupool.so"),
        "GPUPOOL_RUNTIME_DIR": str(directory),
        "GPUPOOL_GPU_DIR": str(root / "gpus"),
        "GPUPOOL_MEMORY_LIMITS": str(memory_mib),
        "GPUPOOL_COMPUTE_LIMITS": str(compute),
        "GPUPOOL_COMPUTE_MODE": mode,
    }


def run_bench(env: dict[str, str], launches: int) -> list[int]:
    out = subprocess.run(
        [str(BUILD / "gpuprog")],
        input=f"bench {launches}\nquit\n",
        env=env | {"FAKECUDA_NS_PER_BLOCK": "0"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.split()
    assert out[0] == "bench", out
    return [int(x) for x in out[1:5]]  # launch p50, p99, alloc p50, p99 (ns)


def overhead(launches: int, repeats: int) -> dict[str, float]:
    """Best of `repeats` runs each way (the machine is shared: the minimum is the least disturbed)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        plain = [run_bench(base_env(root), launches) for _ in range(repeats)]
        env = container_env(root, "c", 1024, 100, "ceiling")
        pooled = [run_bench(env, launches) for _ in range(repeats)]
    best_plain = [min(r[i] for r in plain) for i in range(4)]
    best_pooled = [min(r[i] for r in pooled) for i in range(4)]
    return {
        "launch_p50_plain_us": best_plain[0] / 1e3,
        "launch_p50_pooled_us": best_pooled[0] / 1e3,
        "launch_overhead_p50_us": (best_pooled[0] - best_plain[0]) / 1e3,
        "launch_overhead_p99_us": (best_pooled[1] - best_plain[1]) / 1e3,
        "alloc_overhead_p50_us": (best_pooled[2] - best_plain[2]) / 1e3,
        "alloc_overhead_p99_us": (best_pooled[3] - best_plain[3]) / 1e3,
    }


def shares(targets: list[int], mode: str, seconds: float, warmup: float, kernel_us: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        procs = [
            subprocess.Popen(
                [str(BUILD / "gpuprog")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=container_env(root, f"c{i}", 1, t, mode),
            )
            for i, t in enumerate(targets)
        ]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"spin {kernel_us} {seconds} {warmup}\nquit\n")
            p.stdin.flush()
        achieved = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            word, busy, window = out.split()[:3]
            assert word == "spin", out
            achieved.append(100.0 * int(busy) / max(int(window), 1))
    return achieved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launches", type=int, default=200_000, help="timed launches (and allocations) per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs each way; the best is reported")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each contention run")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds before the share is measured")
    ap.add_argument("--kernel-us", type=int, default=5000, help="kernel length in the contention runs")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if not (BUILD / "gpuprog").exists():
        print("build first: make -C runtime test-bin", file=sys.stderr)
        return 2
    result: dict[str, Any] = overhead(args.launches, args.repeats)
    runs = []
    for mode in ("ceiling", "share"):
        for n, targets in TARGETS.items():
            got = shares(targets, mode, args.seconds, args.warmup, args.kernel_us)
            error = max(abs(g - t) for g, t in zip(got, targets, strict=True))
            runs.append({"mode": mode, "containers": n, "targets": targets, "achieved": got, "error_points": error})
            print(f"{mode:8} {n} containers: targets {targets} achieved {[round(g, 1) for g in got]}", flush=True)
    result["share_runs"] = runs
    result["share_error_max_points"] = max(r["error_points"] for r in runs)
    for key in (
        "launch_p50_plain_us",
        "launch_overhead_p50_us",
        "launch_overhead_p99_us",
        "alloc_overhead_p50_us",
        "share_error_max_points",
    ):
        print(f"{key}: {result[key]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
