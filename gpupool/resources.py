"""The one home of gpupool's user-facing contract: resource names, annotations, and
the parsing of a pod manifest into a `PodRequest` (DESIGN.md §1).

Pods are handled as plain dicts in the API server's JSON form (camelCase keys).
Adapters holding `kubernetes` client objects convert them first with
`ApiClient().sanitize_for_serialization(pod)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from gpupool import policies
from gpupool.errors import FieldError, InvalidRequest
from gpupool.request import WHOLE_GPU_COMPUTE, ContainerRequest, Locality, PodRequest, QoS

# --- resource names (DESIGN.md §1.1) -------------------------------------------------------------

GPU = "gpupool.io/gpu"
GPU_COMPUTE = "gpupool.io/gpu-compute"
GPU_MEMORY = "gpupool.io/gpu-memory"
CANONICAL = (GPU, GPU_COMPUTE, GPU_MEMORY)

#: whitepaper names; `kubernetes.io/` makes them native resources, so the webhook rewrites them
ALIASES: Mapping[str, str] = {
    "pool.kubernetes.io/gpu": GPU,
    "pool.kubernetes.io/gpu-compute": GPU_COMPUTE,
    "pool.kubernetes.io/gpu-memory": GPU_MEMORY,
}

DEFAULT_COMPUTE = WHOLE_GPU_COMPUTE
MIN_COMPUTE, MAX_COMPUTE = 1, WHOLE_GPU_COMPUTE

# --- annotations (DESIGN.md §1.2 and §4.2) --------------------------------------------------------

PREFIX = "gpupool.io/"
QUEUE = "gpupool.io/queue"
LOCALITY = "gpupool.io/locality"
GPU_MODEL = "gpupool.io/gpu-model"
GPU_UUID = "gpupool.io/gpu-uuid"
QOS = "gpupool.io/qos"
POLICY = "gpupool.io/policy"
USER_ANNOTATIONS = (QUEUE, LOCALITY, GPU_MODEL, GPU_UUID, QOS, POLICY)

ASSIGNMENT = "gpupool.io/assignment"
ALLOCATED = "gpupool.io/allocated"
NOMINATED = "gpupool.io/nominated"
SYSTEM_ANNOTATIONS = (ASSIGNMENT, ALLOCATED, NOMINATED)

ADMISSION_GATE = "gpupool.io/admission"
SCHEDULER_NAME = "gpupool-scheduler"

_QUEUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

_SUFFIXES: Mapping[str, int] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_quantity(value: Any, field: str) -> int:
    """Parse a Kubernetes quantity that must be a whole number (extended resources are integers).

    Raises `InvalidRequest` naming `field` for anything that is not a non-negative integer.
    """
    if isinstance(value, bool):
        raise InvalidRequest([FieldError(field, f"expected a whole number, got {value!r}")])
    if isinstance(value, int):
        number = Decimal(value)
    else:
        text = str(value).strip()
        match = _QUANTITY.match(text)
        if not match:
            raise InvalidRequest(
                [FieldError(field, f"{text!r} is not a quantity; write a whole number such as 30")]
            )
        try:
            number = Decimal(match.group(1))
        except InvalidOperation:
            raise InvalidRequest([FieldError(field, f"{text!r} is not a number")]) from None
        suffix = match.group(2) or ""
        number = number / 1000 if suffix == "m" else number * _SUFFIXES[suffix]
    if number < 0:
        raise InvalidRequest([FieldError(field, f"must not be negative (got {value!r})")])
    if number != number.to_integral_value():
        raise InvalidRequest([FieldError(field, f"must be a whole number (got {value!r})")])
    return int(number)


def canonical_name(name: str) -> str:
    """The canonical resource name for `name` (aliases mapped; others unchanged)."""
    return ALIASES.get(name, name)


def mentions_gpupool(pod: Mapping[str, Any]) -> bool:
    """True when any container of the pod asks for a gpupool resource (canonical or alias)."""
    names = set(CANONICAL) | set(ALIASES)
    for container in _all_containers(pod):
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            if names & set((resources.get(section) or {}).keys()):
                return True
    return False


def alias_names_in(pod: Mapping[str, Any]) -> list[str]:
    """Field paths of the pod that still carry an alias resource name."""
    found = []
    for path, container in _containers_with_paths(pod):
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            for name in (resources.get(section) or {}):
                if name in ALIASES:
                    found.append(f"{path}.resources.{section}[{name}]")
    return found


def rewrite_aliases(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations that rename alias resources to canonical ones (for the mutating webhook)."""
    ops: list[dict[str, Any]] = []
    for path, container in _containers_with_paths(pod):
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            values = resources.get(section) or {}
            if not any(name in ALIASES for name in values):
                continue
            renamed = {canonical_name(name): value for name, value in values.items()}
            pointer = path.replace(".", "/").replace("[", "/").replace("]", "")
            ops.append({"op": "replace", "path": f"/{pointer}/resources/{section}", "value": renamed})
    return ops


def _containers_with_paths(pod: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    spec = pod.get("spec") or {}
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            yield f"spec.{kind}[{i}]", container


def _all_containers(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for _, container in _containers_with_paths(pod):
        yield container


def _container_request(
    path: str, container: Mapping[str, Any], index: int, init: bool, errors: list[FieldError]
) -> ContainerRequest | None:
    resources = container.get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    values: dict[str, int] = {}
    for name in CANONICAL:
        raw_limit, raw_request = limits.get(name), requests.get(name)
        field = f"{path}.resources.limits[{name}]"
        try:
            limit = parse_quantity(raw_limit, field) if raw_limit is not None else None
            request = (
                parse_quantity(raw_request, f"{path}.resources.requests[{name}]")
                if raw_request is not None
                else None
            )
        except InvalidRequest as exc:
            errors.extend(exc.errors)
            continue
        if limit is not None and request is not None and limit != request:
            errors.append(
                FieldError(field, f"requests ({request}) and limits ({limit}) must be equal; set only limits")
            )
            continue
        chosen = limit if limit is not None else request
        if chosen is not None:
            values[name] = chosen
    for alias in ALIASES:
        if alias in limits or alias in requests:
            errors.append(
                FieldError(
                    f"{path}.resources.limits[{alias}]",
                    f"alias {alias} reached the scheduler un-rewritten (admission webhook bypassed); "
                    f"write {ALIASES[alias]} instead",
                )
            )
    if not values:
        return None
    name = str(container.get("name") or f"#{index}")
    if GPU not in values:
        # compute or memory alone implies one slice, as users of other GPU-sharing systems expect
        values[GPU] = 1
    count = values[GPU]
    if count < 1:
        if GPU_COMPUTE in values or GPU_MEMORY in values:
            errors.append(FieldError(f"{path}.resources.limits[{GPU}]", "must be at least 1 slice"))
        return None
    compute = values.get(GPU_COMPUTE, DEFAULT_COMPUTE)
    if not MIN_COMPUTE <= compute <= MAX_COMPUTE:
        errors.append(
            FieldError(
                f"{path}.resources.limits[{GPU_COMPUTE}]",
                f"{compute} is out of range; write a percent of one GPU per slice, 1..100",
            )
        )
    memory = values.get(GPU_MEMORY)
    if memory is not None and memory < 1:
        errors.append(
            FieldError(
                f"{path}.resources.limits[{GPU_MEMORY}]",
                "must be at least 1 (MiB per slice); omit it to get the whole memory of the GPU",
            )
        )
    return ContainerRequest(name=name, index=index, count=count, compute=compute, memory_mib=memory, init=init)


def _comma_list(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def parse_pod(pod: Mapping[str, Any], *, allow_system_annotations: bool = True) -> PodRequest:
    """Parse a pod manifest into a `PodRequest`.

    Raises `InvalidRequest` listing every invalid field with what to write instead.
    A pod that asks for no gpupool resource parses to a request with no containers.
    """
    errors: list[FieldError] = []
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers: list[ContainerRequest] = []
    for kind, init in (("initContainers", True), ("containers", False)):
        for i, container in enumerate(spec.get(kind) or []):
            parsed = _container_request(f"spec.{kind}[{i}]", container, i, init, errors)
            if parsed is not None:
                containers.append(parsed)

    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    locality, qos = Locality.LOCAL, QoS.GUARANTEED
    policy: str | None = None
    queue: str | None = None
    models: frozenset[str] = frozenset()
    uuids: frozenset[str] = frozenset()
    for key, value in annotations.items():
        if not key.startswith(PREFIX):
            continue
        field = f"metadata.annotations[{key}]"
        if key == LOCALITY:
            try:
                locality = Locality(value)
            except ValueError:
                errors.append(FieldError(field, f"{value!r} is not a locality; write 'local' or 'pool'"))
        elif key == QOS:
            try:
                qos = QoS(value)
            except ValueError:
                errors.append(FieldError(field, f"{value!r} is not a qos; write 'guaranteed' or 'best-effort'"))
        elif key == POLICY:
            if value not in policies.available():
                errors.append(
                    FieldError(field, f"unknown policy {value!r}; write one of {', '.join(policies.available())}")
                )
            else:
                policy = value
        elif key == QUEUE:
            if not _QUEUE_NAME.match(value):
                errors.append(
                    FieldError(field, f"{value!r} is not a queue name; use lower-case letters, digits and '-'")
                )
            else:
                queue = value
        elif key == GPU_MODEL:
            models = _comma_list(value)
            if not models:
                errors.append(FieldError(field, "empty model list; write e.g. 'A100-80GB,H100-80GB' or remove it"))
        elif key == GPU_UUID:
            uuids = _comma_list(value)
            if not uuids:
                errors.append(FieldError(field, "empty UUID list; write e.g. 'GPU-3f2a…' or remove it"))
        elif key in SYSTEM_ANNOTATIONS:
            if not allow_system_annotations:
                errors.append(FieldError(field, "is written by gpupool only; remove it from the manifest"))
        else:
            errors.append(
                FieldError(
                    field,
                    f"unknown gpupool annotation; allowed are {', '.join(USER_ANNOTATIONS)}",
                )
            )
    if errors:
        raise InvalidRequest(errors)
    return PodRequest(
        uid=str(metadata.get("uid") or ""),
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        containers=tuple(containers),
        locality=locality,
        qos=qos,
        models=models,
        uuids=uuids,
        policy=policy,
        queue=queue,
        priority=int(spec.get("priority") or 0),
    )
