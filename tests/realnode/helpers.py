"""Pods for the real node and the checks of what their containers received."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from e2e.polling import wait_for
from e2e.realnode import real_node_pod
from gpupool import resources
from tests.realnode.conftest import REAL, RealNodeEnv

#: one container's request: (slot count, compute % per slice, memory MiB per slice); None = not given
Ask = tuple[int, int | None, int | None]


def limits(ask: Ask) -> dict[str, Any]:
    gpus, compute, memory = ask
    lim = {resources.CANONICAL[0]: str(gpus)}
    if compute is not None:
        lim[resources.CANONICAL[1]] = str(compute)
    if memory is not None:
        lim[resources.CANONICAL[2]] = str(memory)
    return {"limits": lim}


def gpu_pod(name: str, apps: Sequence[Ask], inits: Sequence[Ask] = ()) -> dict[str, Any]:
    """A pod for the real node whose containers ``c0, c1, ...`` (init: ``i0, ...``) ask for *apps* (*inits*)."""
    return real_node_pod(
        name,
        REAL.name,
        containers=[{"name": f"c{i}", "resources": limits(a)} for i, a in enumerate(apps)],
        init_containers=[{"name": f"i{i}", "resources": limits(a)} for i, a in enumerate(inits)],
    )


def assignment_of(pod: Any) -> dict[str, Any]:
    text = (pod.metadata.annotations or {}).get(resources.ASSIGNMENT)
    assert text, f"{pod.metadata.name} has no {resources.ASSIGNMENT}"
    return dict(json.loads(text))


def container_keys(pod: Any) -> dict[str, str]:
    """container name -> gpupool's container key (``"0"`` / ``"init:0"``)."""
    keys = {c.name: str(i) for i, c in enumerate(pod.spec.containers)}
    keys.update({c.name: f"init:{i}" for i, c in enumerate(pod.spec.init_containers or [])})
    return keys


def assigned(assignment: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """The assignment's slices of one container key."""
    init = key.startswith("init:")
    index = int(key.removeprefix("init:"))
    return [s for s in assignment["slices"] if int(s["c"]) == index and bool(s.get("init")) == init]


def wait_running(rn: RealNodeEnv, ns: str, name: str, timeout: float = 120.0) -> Any:
    """Until the pod runs on the real node with every app container started; fails fast if the kubelet
    rejected it (phase Failed, e.g. ``OutOf...`` admission)."""

    def running() -> Any:
        p = rn.v1.read_namespaced_pod(name, ns)
        assert p.status.phase != "Failed", f"{ns}/{name} failed: {p.status.reason}: {p.status.message}"
        started = all(s.state.running for s in (p.status.container_statuses or [])) and p.status.container_statuses
        return p if p.status.phase == "Running" and started else None

    try:
        return wait_for(running, timeout=timeout, what=f"{ns}/{name} running on {REAL.name}", interval=0.5)
    except TimeoutError as e:
        p = rn.v1.read_namespaced_pod(name, ns)
        events = rn.v1.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        raise AssertionError(
            f"{e}\nnode={p.spec.node_name} phase={p.status.phase} statuses={p.status.container_statuses}\n"
            f"events: {[f'{ev.reason}: {ev.message}' for ev in events]}"
        ) from None


def received(rn: RealNodeEnv, pod: Any, timeout: float = 60.0) -> dict[str, dict[str, str]]:
    """container key -> the environment that container printed from inside."""
    ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
    out: dict[str, dict[str, str]] = {}
    for cname, key in container_keys(pod).items():
        out[key] = wait_for(
            lambda cname=cname: rn.node.container_env(ns, name, uid, cname),
            timeout=timeout,
            what=f"{ns}/{name}/{cname} to print its environment",
            interval=0.3,
        )
    return out


def slices_seen(env: Mapping[str, str]) -> list[tuple[str, str, int, int]]:
    """(gpu, slot, compute, memory) of every slice in a container's ``GPUPOOL_SLICES``."""
    return sorted((s["gpu"], s["slot"], int(s["compute"]), int(s["memory"])) for s in json.loads(env["GPUPOOL_SLICES"]))


def slices_assigned(assignment: Mapping[str, Any], key: str) -> list[tuple[str, str, int, int]]:
    return sorted((s["gpu"], s["slot"], int(s["compute"]), int(s["memory"])) for s in assigned(assignment, key))


def check_identity(rn: RealNodeEnv, pods: Iterable[Any]) -> list[str]:
    """Every container of *pods* received exactly its own slices (from inside the container): the problems."""
    problems: list[str] = []
    for pod in pods:
        a = assignment_of(pod)
        for key, env in received(rn, pod).items():
            want = slices_assigned(a, key)
            if "GPUPOOL_SLICES" not in env:
                if want:
                    problems.append(f"{pod.metadata.name}[{key}]: no GPUPOOL_SLICES, assigned {want}")
                continue
            got = slices_seen(env)
            if got != want:
                problems.append(f"{pod.metadata.name}[{key}]: received {got}, assigned {want}")
            uuids = sorted({s[0] for s in want})
            visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
            if sorted(visible.split(",")) != uuids:
                problems.append(f"{pod.metadata.name}[{key}]: NVIDIA_VISIBLE_DEVICES={visible}, assigned {uuids}")
    return problems
