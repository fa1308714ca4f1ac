"""The one home of gpupool's user-facing contract: resource names, annotations, and
the parsing of a pod manifest into a `PodRequest` (DESIGN.md §1).

Pods are handled as plain dicts in the API server's JSON form (camelCase keys).
Adapters holding `kubernetes` client objects convert them first with
`ApiClient().sanitize_for_serialization(pod)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation, localcontext
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
#: how the pool runtime holds the pod's compute share (docs/runtime.md "Compute"); absent: the node's default
COMPUTE_MODE = "gpupool.io/compute-mode"
COMPUTE_MODES = ("ceiling", "share")
#: a pod group (gang, docs/workloads.md): its name and the members admitted together (`gpupool.groups`)
POD_GROUP = "gpupool.io/pod-group"
MIN_MEMBERS = "gpupool.io/min-members"
USER_ANNOTATIONS = (QUEUE, LOCALITY, GPU_MODEL, GPU_UUID, QOS, POLICY, COMPUTE_MODE, POD_GROUP, MIN_MEMBERS)

ASSIGNMENT = "gpupool.io/assignment"
ALLOCATED = "gpupool.io/allocated"
NOMINATED = "gpupool.io/nominated"
#: resizing a running pod (format and decision: `gpupool/resize.py`): the user's request, validated at admission,
#: and what gpupool writes back (the outcome history; the node agent's report of memory in use)
RESIZE = "gpupool.io/resize"
RESIZE_STATUS = "gpupool.io/resize-status"
USAGE = "gpupool.io/usage"
SYSTEM_ANNOTATIONS = (ASSIGNMENT, ALLOCATED, NOMINATED, RESIZE_STATUS, USAGE)

ADMISSION_GATE = "gpupool.io/admission"
SCHEDULER_NAME = "gpupool-scheduler"

# --- environment gpupool owns (docs/contracts.md, "Allocate environment") --------------------------

#: variables the device plugin sets (or the runtime reads) to confine a container to its slices; a pod
#: that sets one itself could widen what it was given wherever the runtime lets the pod's env win
RUNTIME_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_DEVICE_SM_LIMIT",
               "LD_PRELOAD")  # fmt: skip
RUNTIME_ENV_PREFIXES = ("GPUPOOL_", "CUDA_MPS_", "CUDA_DEVICE_MEMORY_LIMIT")


def is_runtime_env(name: str) -> bool:
    """True for an environment variable gpupool owns (`RUNTIME_ENV`, `RUNTIME_ENV_PREFIXES`)."""
    return name in RUNTIME_ENV or name.startswith(RUNTIME_ENV_PREFIXES)


_QUEUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

_SUFFIXES: Mapping[str, int] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

#: the largest quantity gpupool accepts (int64, as Kubernetes stores quantities); bounds every value
MAX_QUANTITY = 2**63 - 1
#: longest quantity text read at all, and the most digits of its mantissa and of its exponent: checked
#: BEFORE any conversion, so "1e999999" is refused in microseconds instead of building a huge number
MAX_QUANTITY_TEXT = 64
MAX_MANTISSA_DIGITS = 30
MAX_EXPONENT_DIGITS = 3


def _too_large(field: str, shown: str) -> InvalidRequest:
    return InvalidRequest(
        [FieldError(field, f"{shown} is out of range; write a whole number from 0 to {MAX_QUANTITY}")]
    )


def parse_quantity(value: Any, field: str) -> int:
    """Parse a Kubernetes quantity that must be a whole number (extended resources are integers).

    Raises `InvalidRequest` naming `field` for anything that is not an integer in 0..`MAX_QUANTITY`.
    Digit and exponent counts are bounded before conversion (docs/contracts.md, "quantities").
    """
    if isinstance(value, bool):
        raise InvalidRequest([FieldError(field, f"expected a whole number, got {value!r}")])
    if isinstance(value, int):
        if value < 0:
            raise InvalidRequest([FieldError(field, "must not be negative")])
        if value > MAX_QUANTITY:
            raise _too_large(field, "the number")
        return value
    if isinstance(value, float):
        value = repr(value)  # JSON numbers with a fraction or exponent: read as their text
    if not isinstance(value, str):
        raise InvalidRequest(
            [FieldError(field, f"expected a quantity string such as \"30\", got a {type(value).__name__}")]
        )
    text = value.strip()
    if len(text) > MAX_QUANTITY_TEXT:
        raise InvalidRequest(
            [FieldError(field, f"quantity of {len(text)} characters; write a whole number such as 30")]
        )
    match = _QUANTITY.match(text)
    if not match or not (match.group(2) or match.group(3)):
        raise InvalidRequest([FieldError(field, f"{text!r} is not a quantity; write a whole number such as 30")])
    sign, whole, fraction, exponent, suffix = match.groups()
    digits = (whole or "").lstrip("0") + (fraction or "")
    if len(digits) > MAX_MANTISSA_DIGITS or len((exponent or "").lstrip("+-").lstrip("0")) > MAX_EXPONENT_DIGITS:
        raise _too_large(field, repr(text))
    scale = int(exponent or 0)  # bounded now: |scale| < 1000 and at most 30 digits, so the Decimal is small
    with localcontext() as ctx:
        ctx.prec = 2 * MAX_MANTISSA_DIGITS + 40  # exact for every bounded input (no rounding)
        ctx.Emax, ctx.Emin = 10_000, -10_000
        try:
            number = Decimal(f"{sign}{whole or '0'}.{fraction or '0'}E{scale}")
        except InvalidOperation:
            raise InvalidRequest([FieldError(field, f"{text!r} is not a number")]) from None
        number = number / 1000 if suffix == "m" else number * _SUFFIXES[suffix or ""]
        if number < 0:
            raise InvalidRequest([FieldError(field, f"must not be negative (got {text!r})")])
        if number != number.to_integral_value():
            raise InvalidRequest([FieldError(field, f"must be a whole number (got {text!r})")])
        if number > MAX_QUANTITY:
            raise _too_large(field, repr(text))
        return int(number)


# --- the shape of a pod manifest ------------------------------------------------------------------

_OBJECT, _LIST, _STRING, _INTEGER = "an object", "a list", "a string", "an integer"
#: fields gpupool reads and the JSON type each must have (absent or null is always fine)
_POD_FIELDS: tuple[tuple[str, str], ...] = (
    ("metadata", _OBJECT), ("spec", _OBJECT), ("status", _OBJECT),
    ("metadata.name", _STRING), ("metadata.namespace", _STRING), ("metadata.uid", _STRING),
    ("metadata.annotations", _OBJECT), ("metadata.labels", _OBJECT),
    ("spec.containers", _LIST), ("spec.initContainers", _LIST), ("spec.schedulingGates", _LIST),
    ("spec.nodeName", _STRING), ("spec.priority", _INTEGER), ("spec.schedulerName", _STRING),
    ("spec.nodeSelector", _OBJECT), ("status.phase", _STRING),
)  # fmt: skip
_CONTAINER_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", _STRING), ("resources", _OBJECT), ("resources.limits", _OBJECT), ("resources.requests", _OBJECT),
    ("securityContext", _OBJECT), ("env", _LIST), ("envFrom", _LIST),
)  # fmt: skip
_CHECKS: dict[str, Callable[[Any], bool]] = {
    _OBJECT: lambda v: isinstance(v, dict),
    _LIST: lambda v: isinstance(v, list),
    _STRING: lambda v: isinstance(v, str),
    _INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
}

#: `_POD_FIELDS` as (path parts, check), for `pod_request_key`
_POD_PATHS: tuple[tuple[tuple[str, ...], Callable[[Any], bool]], ...] = tuple(
    (tuple(path.split(".")), _CHECKS[kind]) for path, kind in _POD_FIELDS
)


def _lookup(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None  # the parent is reported on its own
        value = value.get(part)
    return value


def _shape(obj: Mapping[str, Any], fields: Iterable[tuple[str, str]], where: str) -> list[FieldError]:
    errors = []
    for path, kind in fields:
        value = _lookup(obj, path)
        if value is not None and not _CHECKS[kind](value):
            errors.append(FieldError(f"{where}{path}", f"must be {kind}, got {type(value).__name__}"))
    return errors


def pod_shape_errors(pod: Any) -> list[FieldError]:
    """Every field gpupool reads that has the wrong JSON type, named (empty = the shape is fine).

    The API server never stores such a pod, but webhooks and extender bodies are only JSON: this check
    runs first, so no reader of a pod meets a string where it expects an object (issue 12 #5).
    """
    if not isinstance(pod, dict):
        return [FieldError("pod", f"must be an object, got {type(pod).__name__}")]
    errors = _shape(pod, _POD_FIELDS, "")
    for key, value in _obj(_lookup(pod, "metadata.annotations")).items():
        if not isinstance(value, str):
            errors.append(FieldError(f"metadata.annotations[{key}]", f"must be a string, got {type(value).__name__}"))
    for i, gate in enumerate(_list(_lookup(pod, "spec.schedulingGates"))):
        if not isinstance(gate, dict) or not isinstance(gate.get("name"), str):
            errors.append(FieldError(f"spec.schedulingGates[{i}]", "must be an object with a name"))
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(_list(_lookup(pod, f"spec.{kind}"))):
            where = f"spec.{kind}[{i}]"
            if not isinstance(container, dict):
                errors.append(FieldError(where, f"must be an object, got {type(container).__name__}"))
                continue
            errors.extend(_shape(container, _CONTAINER_FIELDS, where + "."))
            for j, item in enumerate(_list(container.get("env"))):
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    errors.append(FieldError(f"{where}.env[{j}]", "must be an object with a name"))
            for j, item in enumerate(_list(container.get("envFrom"))):
                if not isinstance(item, dict):
                    errors.append(FieldError(f"{where}.envFrom[{j}]", "must be an object"))
    return errors


def canonical_name(name: str) -> str:
    """The canonical resource name for `name` (aliases mapped; others unchanged)."""
    return ALIASES.get(name, name)


def mentions_gpupool(pod: Mapping[str, Any]) -> bool:
    """True when any container of the pod asks for a gpupool resource (canonical or alias)."""
    names = set(CANONICAL) | set(ALIASES)
    for container in _all_containers(pod):
        resources = _obj(container.get("resources"))
        for section in ("limits", "requests"):
            if names & set(_obj(resources.get(section))):
                return True
    return False


def alias_names_in(pod: Mapping[str, Any]) -> list[str]:
    """Field paths of the pod that still carry an alias resource name."""
    found = []
    for path, container in _containers_with_paths(pod):
        resources = _obj(container.get("resources"))
        for section in ("limits", "requests"):
            for name in _obj(resources.get(section)):
                if name in ALIASES:
                    found.append(f"{path}.resources.{section}[{name}]")
    return found


def rewrite_aliases(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations that rename alias resources to canonical ones (for the mutating webhook)."""
    ops: list[dict[str, Any]] = []
    for path, container in _containers_with_paths(pod):
        resources = _obj(container.get("resources"))
        for section in ("limits", "requests"):
            values = _obj(resources.get(section))
            if not any(name in ALIASES for name in values):
                continue
            renamed = {canonical_name(name): value for name, value in values.items()}
            pointer = path.replace(".", "/").replace("[", "/").replace("]", "")
            ops.append({"op": "replace", "path": f"/{pointer}/resources/{section}", "value": renamed})
    return ops


def _obj(value: Any) -> Mapping[str, Any]:
    """`value` when it is an object, else an empty one (readers that run before `pod_shape_errors`)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """`value` when it is a list, else an empty one (its type is reported on its own)."""
    return value if isinstance(value, list) else []


def _containers_with_paths(pod: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    spec = _obj(_obj(pod).get("spec"))
    for kind in ("initContainers", "containers"):
        items = spec.get(kind)
        for i, container in enumerate(items if isinstance(items, list) else []):
            if isinstance(container, dict):
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


def compute_mode_problem(value: object) -> str | None:
    """Why `value` is not a `gpupool.io/compute-mode`, or None (the one check: admission and the node agent)."""
    if value in COMPUTE_MODES:
        return None
    return f"{value!r} is not a compute mode; write {' or '.join(repr(m) for m in COMPUTE_MODES)}"


def _comma_list(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


_GROUP_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
#: the most members one pod group may ask to be admitted together
MAX_MIN_MEMBERS = 10_000


def pod_group(annotations: Mapping[str, Any]) -> tuple[str, int] | None:
    """(group name, min-members) of `gpupool.io/pod-group` + `gpupool.io/min-members` (absent: 1), or None.

    Raises `InvalidRequest` naming the annotation: a name that is no DNS subdomain, a min-members that is
    not a whole number in 1..`MAX_MIN_MEMBERS`, or a min-members without a group (docs/workloads.md).
    """
    name, size = annotations.get(POD_GROUP), annotations.get(MIN_MEMBERS)
    errors: list[FieldError] = []
    if name is not None and not (isinstance(name, str) and _GROUP_NAME.match(name)):
        errors.append(FieldError(f"metadata.annotations[{POD_GROUP}]", f"{name!r} is not a group name; use "
                                 "lower-case letters, digits, '-' and '.' (at most 253)"))  # fmt: skip
    count = 1
    if size is not None:
        field = f"metadata.annotations[{MIN_MEMBERS}]"
        text = size.strip() if isinstance(size, str) else ""
        if not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_MIN_MEMBERS:
            errors.append(FieldError(field, f"{size!r} is not a member count; write a whole number from 1 to "
                                     f"{MAX_MIN_MEMBERS}"))  # fmt: skip
        elif name is None:
            errors.append(FieldError(field, f"needs {POD_GROUP} naming the group the pod belongs to; add it or "
                                     "remove this annotation"))  # fmt: skip
        else:
            count = int(text)
    if errors:
        raise InvalidRequest(errors)
    return None if name is None else (str(name), count)


def pod_request_key(pod: Any) -> tuple[Any, ...]:
    """Everything `parse_pod` reads of a pod, for equality only: equal keys, equal `PodRequest` (or the same
    errors). The values it reads (name, namespace, uid, priority, annotations, scheduling gates, containers), and
    of the other fields the shape check names (labels, nodeName, phase, ...) only whether each is absent or of its
    type, which is all it reads of them: a watch event that changed a pod's status, labels or node keeps its key."""
    if not isinstance(pod, dict):
        return (type(pod),)
    meta = _obj(pod.get("metadata"))
    spec = _obj(pod.get("spec"))
    shape = []
    for (first, *rest), check in _POD_PATHS:
        value = pod.get(first)
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        shape.append(value is None or check(value))
    return (
        tuple(shape),
        meta.get("uid"), meta.get("name"), meta.get("namespace"), spec.get("priority"), meta.get("annotations"),
        spec.get("schedulingGates"), spec.get("containers"), spec.get("initContainers"),
    )  # fmt: skip


def parse_pod(pod: Mapping[str, Any], *, allow_system_annotations: bool = True) -> PodRequest:
    """Parse a pod manifest into a `PodRequest`.

    Raises `InvalidRequest` listing every invalid field with what to write instead.
    A pod that asks for no gpupool resource parses to a request with no containers.
    """
    shape = pod_shape_errors(pod)
    if shape:
        raise InvalidRequest(shape)
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
        elif key == COMPUTE_MODE:
            problem = compute_mode_problem(value)
            if problem is not None:
                errors.append(FieldError(field, problem))
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
        elif key in (POD_GROUP, MIN_MEMBERS):
            pass  # read together by `pod_group`, below
        elif key == RESIZE:
            pass  # a resize request: read by `gpupool.resize` (and checked by admission), not a placement input
        elif key in SYSTEM_ANNOTATIONS:
            if not allow_system_annotations:
                errors.append(FieldError(field, "is written by gpupool only; remove it from the manifest"))
        else:
            errors.append(
                FieldError(
                    field,
                    f"unknown gpupool annotation; allowed are {', '.join((*USER_ANNOTATIONS, RESIZE))}",
                )
            )
    try:
        pod_group(annotations)
    except InvalidRequest as exc:
        errors.extend(exc.errors)
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
