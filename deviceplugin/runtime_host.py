"""The node side of the pool backend: installs the runtime library on the host, writes each container's control
region at Allocate, reads the accounting regions for /metrics, and removes the directories of pods that are gone.

Formats and paths: `deviceplugin.runtime_regions`; design: docs/runtime.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deviceplugin import runtime_regions as regions
from deviceplugin.allocate import ContainerPlan, compute_mode, local_slices
from deviceplugin.settings import DevicePluginSettings
from gpupool.assignment import SliceRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    namespace: str
    pod: str
    container: str
    usage: regions.Accounting


class RuntimeHost:
    def __init__(self, settings: DevicePluginSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.runtime_state_dir)

    def install(self) -> None:
        """Copy the library to the host directory the containers mount, and write its `ld.so.preload`."""
        lib_dir = Path(self.settings.runtime_lib_dir)
        source = Path(self.settings.runtime_library)
        lib_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "containers").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "gpus").mkdir(parents=True, exist_ok=True)
        target = lib_dir / regions.LIBRARY_NAME
        if source.is_file():
            if not target.exists() or target.read_bytes() != source.read_bytes():
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o755)
                os.replace(tmp, target)  # a running process keeps the old inode mapped
        elif not target.exists():
            log.warning("pool backend: no runtime library at %s nor %s; set --runtime-library", source, target)
        preload = lib_dir / regions.PRELOAD_FILE
        line = f"{target}\n"
        if not preload.exists() or preload.read_text() != line:
            preload.write_text(line)

    def prepare(self, plan: ContainerPlan, gpu_index: Mapping[str, int]) -> None:
        """Create the container's and its GPUs' directories and write its control region (limits in effect)."""
        local = local_slices(plan, gpu_index)
        if not local:
            return
        directory = Path(regions.container_dir(str(self.state_dir), plan.pod_uid, plan.container))
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o777)  # the container's processes create the accounting region, whatever their uid
        for s in local:
            gpu = Path(regions.gpu_dir(str(self.state_dir), s.gpu))
            gpu.mkdir(parents=True, exist_ok=True)
            os.chmod(gpu, 0o777)
        namespace, _, name = plan.pod.partition("/")
        owner = {"namespace": namespace, "pod": name, "uid": plan.pod_uid, "container": plan.container}
        (directory / regions.OWNER_FILE).write_text(json.dumps(owner, sort_keys=True))
        limits = [regions.DeviceLimit(s.memory_mib, s.compute) for s in local]
        generation = regions.read_control_generation(directory) + 1
        regions.write_control(directory, limits, compute_mode(plan, self.settings), generation)

    def usage(self) -> list[ContainerUsage]:
        """Every container region on this node that has an accounting region."""
        out: list[ContainerUsage] = []
        for owner_file in sorted(self.state_dir.glob(f"containers/*/*/{regions.OWNER_FILE}")):
            acc = regions.read_accounting(owner_file.parent / regions.ACCOUNTING_FILE)
            if acc is None:
                continue
            try:
                owner = json.loads(owner_file.read_text())
            except (OSError, ValueError):
                continue
            out.append(ContainerUsage(owner["namespace"], owner["pod"], owner["container"], acc))
        return out

    def forget(self, live_pod_uids: Iterable[str]) -> list[str]:
        """Remove the directories of pods no longer on this node; returns the uids removed."""
        live = set(live_pod_uids)
        gone = []
        for pod_dir in (self.state_dir / "containers").glob("*"):
            if pod_dir.is_dir() and pod_dir.name not in live:
                shutil.rmtree(pod_dir, ignore_errors=True)
                gone.append(pod_dir.name)
        return sorted(gone)

    # --- resize (docs/runtime.md "Resize") -------------------------------------------------------------------

    def _local(self, uid: str, container: str, slices: tuple[SliceRecord, ...], node: str,
               gpu_index: Mapping[str, int]) -> tuple[Path, list[SliceRecord]]:  # fmt: skip
        plan = ContainerPlan(pod_uid=uid, pod="", container=container, slots=(), slices=slices, node=node, how="")
        return Path(regions.container_dir(str(self.state_dir), uid, container)), local_slices(plan, gpu_index)

    def refresh(self, uid: str, container: str, slices: tuple[SliceRecord, ...], node: str,
                gpu_index: Mapping[str, int]) -> bool:  # fmt: skip
        """Rewrite the container's control region when its slices (a resized assignment) differ from the limits
        it holds; the runtime applies them live. Only containers Allocate prepared have a region. True: rewritten."""
        directory, local = self._local(uid, container, slices, node, gpu_index)
        if not local or not directory.is_dir():
            return False
        limits = [regions.DeviceLimit(s.memory_mib, s.compute) for s in local]
        current = regions.read_control(directory)
        if current is not None and current[0] == limits:
            return False
        mode = current[1] if current is not None else self.settings.runtime_compute_mode  # the mode Allocate chose
        regions.write_control(directory, limits, mode, (current[2] if current is not None else 0) + 1)
        return True

    def memory_used(self, uid: str, container: str, slices: tuple[SliceRecord, ...], node: str,
                    gpu_index: Mapping[str, int]) -> dict[str, int] | None:  # fmt: skip
        """MiB in use per local GPU (rounded up) from the container's accounting region; None when the container
        has no region (not allocated here). No accounting region yet: no process allocated anything, 0."""
        directory, local = self._local(uid, container, slices, node, gpu_index)
        if not local or not directory.is_dir():
            return None
        acc = regions.read_accounting(directory / regions.ACCOUNTING_FILE)
        used = [d.memory_used_bytes for d in acc.devices] if acc is not None else []
        return {s.gpu: -(-(used[i] if i < len(used) else 0) // (1 << 20)) for i, s in enumerate(local)}
