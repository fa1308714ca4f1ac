"""Admission of pods that ask for gpupool resources: mutation and validation as plain functions.

The kopf handlers in `controller.handlers` call these; they take and return API JSON dicts and never
touch the network, so the bad-input matrix is tested without a server. All parsing of resources and
annotations goes through `gpupool.resources.parse_pod` (DESIGN.md §1, §7).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import jsonpatch

from gpupool import objects, resources
from gpupool import resize as resize_format
from gpupool.errors import FieldError, InvalidRequest
from gpupool.ledger import Ledger
from gpupool.request import Locality, PodRequest


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """What the pool could ever give one pod (0 = unknown: the pool is empty, bounds are not checked)."""

    largest_gpu_mib: int = 0
    largest_node_gpus: int = 0
    total_gpus: int = 0
    models: frozenset[str] = frozenset()

    @staticmethod
    def of(ledger: Ledger) -> PoolLimits:
        largest = node_max = total = 0
        models: set[str] = set()
        for name in ledger.node_names():
            gpus = ledger.gpus_of(name)
            node_max = max(node_max, len(gpus))
            total += len(gpus)
            for g in gpus:
                largest = max(largest, g.memory_mib)
                models.add(g.model)
        return PoolLimits(largest, node_max, total, frozenset(models))


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    #: usernames allowed to write system annotations and remove the admission gate
    system_usernames: frozenset[str] = frozenset({"system:serviceaccount:gpupool-system:gpupool-controller"})
    allow_privileged: bool = False


def is_system_user(userinfo: Mapping[str, Any] | None, config: AdmissionConfig) -> bool:
    return str((userinfo or {}).get("username") or "") in config.system_usernames


def mutate(pod: Mapping[str, Any], *, node_selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pod as gpupool wants it stored (CREATE): canonical names, defaults, scheduler, gate, tenant nodes."""
    ops = mutation_patch(pod, node_selector=node_selector)
    return copy.deepcopy(cast(dict[str, Any], jsonpatch.apply_patch(dict(pod), ops)))  # shares nothing with `pod`


def mutation_patch(pod: Mapping[str, Any], *, node_selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The JSON patch the mutating webhook answers for a CREATE: the changes `mutate` makes, built from the pod
    without copying or diffing it (the webhook is called for every pod of a burst: issue 16). Empty when the pod
    needs none; a malformed pod is left as it is for `validate` to refuse, naming the fields."""
    if resources.pod_shape_errors(pod):
        return []
    ops = resources.rewrite_aliases(pod)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        spec = {}
        ops.append({"op": "add", "path": "/spec", "value": {}})
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            res = container.get("resources") or {}
            limits = {resources.canonical_name(k): v for k, v in (res.get("limits") or {}).items()}
            requests = {resources.canonical_name(k): v for k, v in (res.get("requests") or {}).items()}
            names = limits.keys() | requests.keys()
            # the kubelet's slot accounting needs the slice count; compute alone means one slice
            if not names & set(resources.CANONICAL) or resources.GPU in names:
                continue
            where = f"/spec/{kind}/{i}/resources"
            ops.append({"op": "add", "path": f"{where}/limits", "value": {**limits, resources.GPU: "1"}})
            if requests:
                ops.append({"op": "add", "path": f"{where}/requests", "value": {**requests, resources.GPU: "1"}})
    if spec.get("schedulerName") != resources.SCHEDULER_NAME:
        ops.append({"op": "add", "path": "/spec/schedulerName", "value": resources.SCHEDULER_NAME})
    if not objects.pod_gated(pod):
        gates = [*(spec.get("schedulingGates") or []), {"name": resources.ADMISSION_GATE}]
        ops.append({"op": "add", "path": "/spec/schedulingGates", "value": gates})
    if node_selector:
        # the queue's tenant isolation wins over the pod's own values
        selector = {**(spec.get("nodeSelector") or {}), **node_selector}
        if selector != spec.get("nodeSelector"):
            ops.append({"op": "add", "path": "/spec/nodeSelector", "value": selector})
    return ops


def _system_annotation_changes(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[str]:
    new_ann = (new.get("metadata") or {}).get("annotations") or {}
    old_ann = ((old or {}).get("metadata") or {}).get("annotations") or {}
    return [key for key in resources.SYSTEM_ANNOTATIONS if new_ann.get(key) != old_ann.get(key)]


def _gate_removed(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    return old is not None and objects.pod_gated(old) and not objects.pod_gated(new)


def validate(
    pod: Mapping[str, Any],
    *,
    old: Mapping[str, Any] | None = None,
    operation: str = "CREATE",
    userinfo: Mapping[str, Any] | None = None,
    limits: PoolLimits = PoolLimits(),
    config: AdmissionConfig = AdmissionConfig(),
) -> list[FieldError]:
    """Every problem of the pod, each naming the field and what to write instead (empty = allowed)."""
    shape = resources.pod_shape_errors(pod)
    if shape:
        return shape
    if old is not None and resources.pod_shape_errors(old):
        old = None  # the API server always sends a stored pod; anything else is read as no old object
    system = is_system_user(userinfo, config)
    errors: list[FieldError] = []
    if not system:
        for key in _system_annotation_changes(pod, old if operation == "UPDATE" else None):
            errors.append(
                FieldError(f"metadata.annotations[{key}]", "is written by gpupool only; remove it from the manifest")
            )
        if operation == "UPDATE" and _gate_removed(pod, old):
            errors.append(
                FieldError(
                    f"spec.schedulingGates[{resources.ADMISSION_GATE}]",
                    "is removed by the gpupool controller when the pod's queue admits it; leave it in place",
                )
            )
    errors.extend(resize_errors(pod, old=old, operation=operation, limits=limits))
    if operation == "UPDATE" and old is not None and _gpupool_intent(pod) == _gpupool_intent(old):
        # what the pod asks of gpupool did not change: an update of a stored pod (labels, finalizers) must
        # not fail because the pool changed under it (a node left, the largest GPU is smaller now)
        return errors
    try:
        request = resources.parse_pod(pod, allow_system_annotations=True)
    except InvalidRequest as exc:
        return errors + list(exc.errors)
    if not request.containers:
        # it names gpupool resources (so the mutating webhook gated it) but asks for no slice: nothing would
        # ever admit it, so it would wait gated forever (CREATE only: never block updates of a stored pod)
        return errors + (_asks_for_nothing(pod) if operation == "CREATE" else [])
    errors.extend(_bounds(pod, request, limits))
    if not config.allow_privileged:
        errors.extend(_privileged(pod, request))
    if operation == "CREATE":  # a pod's env is immutable: checking it once, at creation, is enough
        errors.extend(_runtime_env(pod))
    return errors


def resize_errors(
    pod: Mapping[str, Any],
    *,
    old: Mapping[str, Any] | None = None,
    operation: str = "CREATE",
    limits: PoolLimits = PoolLimits(),
) -> list[FieldError]:
    """A new or changed `gpupool.io/resize` request (docs/runtime.md, "Resize"): readable, sensible, on a running
    pod's app container holding slices, with a `seq` above the previous request's.

    Who may ask: the webhook sees an UPDATE only after the API server authorised it, so a request reaching here
    comes from a user allowed to update (or patch) this pod; the webhook refuses it at CREATE (a new pod asks for
    its slices in its resources) and refuses edits of what gpupool writes back (`SYSTEM_ANNOTATIONS`).
    """
    text = _annotations(pod).get(resources.RESIZE)
    before = _annotations(old).get(resources.RESIZE) if old is not None else None
    if text is None or (operation == "UPDATE" and text == before):
        return []
    field = f"metadata.annotations[{resources.RESIZE}]"
    if operation != "UPDATE" or old is None:
        return [FieldError(field, "resizes a running pod; a new pod asks for its slices in its resources, "
                                  "remove the annotation")]  # fmt: skip
    try:
        request = resize_format.parse_request(text)
    except InvalidRequest as exc:
        return list(exc.errors)
    errors: list[FieldError] = []
    try:
        previous = resize_format.parse_request(before) if before is not None else None
    except InvalidRequest:
        previous = None
    last = max([o.seq for o in resize_format.history_of(old)] + ([previous.seq] if previous else []), default=-1)
    if request.seq <= last:
        errors.append(FieldError(f"{field}.seq", f"must be larger than the last request's ({last}); "
                                                 f"write {last + 1}"))  # fmt: skip
    index = resize_format.container_index(pod, request.container)
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, Mapping)]
    if index is None:
        errors.append(FieldError(f"{field}.container", f"the pod has no app container {request.container!r}; "
                                                       f"write one of {', '.join(names)}"))  # fmt: skip
    else:
        try:
            parsed = resources.parse_pod(pod, allow_system_annotations=True)
        except InvalidRequest:
            parsed = None
        if parsed is not None and not any(c.index == index and not c.init for c in parsed.containers):
            errors.append(FieldError(f"{field}.container",
                                     f"container {request.container!r} asks for no gpupool slice; "
                                     "resize one that does"))  # fmt: skip
    if request.memory_mib is not None and limits.largest_gpu_mib and request.memory_mib > limits.largest_gpu_mib:
        errors.append(FieldError(f"{field}.memory", f"{request.memory_mib} MiB per slice is more than the largest GPU "
                                                    f"in the pool ({limits.largest_gpu_mib} MiB)"))  # fmt: skip
    if objects.pod_assignment_text(old) is None:
        errors.append(FieldError(field, "the pod holds no slices yet (it is not bound); resize it once it runs"))
    return errors


def _gpupool_intent(pod: Mapping[str, Any]) -> tuple[object, ...]:
    """What a pod asks of gpupool: its user annotations and its containers' resources and privilege."""
    annotations = ((pod.get("metadata") or {}).get("annotations") or {})
    spec = pod.get("spec") or {}
    containers = [
        (c.get("resources"), (c.get("securityContext") or {}).get("privileged"))
        for kind in ("initContainers", "containers")
        for c in spec.get(kind) or []
    ]
    users = sorted((k, v) for k, v in annotations.items() if k in resources.USER_ANNOTATIONS)
    return (repr(containers), tuple(users))


def _asks_for_nothing(pod: Mapping[str, Any]) -> list[FieldError]:
    """A pod that mentions gpupool resources yet asks for no slice (`gpupool.io/gpu: 0` alone)."""
    errors: list[FieldError] = []
    spec = pod.get("spec") or {}
    names = set(resources.CANONICAL) | set(resources.ALIASES)
    for init, kind in ((True, "initContainers"), (False, "containers")):
        for i, container in enumerate(spec.get(kind) or []):
            res = container.get("resources") or {}
            for section in ("limits", "requests"):
                for name in sorted(names & set(res.get(section) or {})):
                    errors.append(
                        FieldError(
                            f"{_path(init, i)}.resources.{section}[{name}]",
                            "asks for no slice, so the pod would wait for gpupool forever; write at least 1 "
                            "slice or remove the gpupool resources",
                        )
                    )
    return errors


def _path(container_init: bool, index: int) -> str:
    return f"spec.{'initContainers' if container_init else 'containers'}[{index}]"


def _bounds(pod: Mapping[str, Any], request: PodRequest, limits: PoolLimits) -> list[FieldError]:
    errors: list[FieldError] = []
    if limits.total_gpus == 0:
        return errors  # the pool is empty (or not rebuilt yet): no bound to check against
    for c in request.containers:
        path = _path(c.init, c.index)
        if c.memory_mib is not None and c.memory_mib > limits.largest_gpu_mib:
            errors.append(
                FieldError(
                    f"{path}.resources.limits[{resources.GPU_MEMORY}]",
                    f"{c.memory_mib} MiB per slice is more than the largest GPU in the pool "
                    f"({limits.largest_gpu_mib} MiB); write at most {limits.largest_gpu_mib}",
                )
            )
        most = limits.total_gpus if request.locality is Locality.POOL else limits.largest_node_gpus
        if c.count > most:
            where = "the pool has" if request.locality is Locality.POOL else "the largest node has"
            hint = "" if request.locality is Locality.POOL else f", or set {resources.LOCALITY}: pool"
            errors.append(
                FieldError(
                    f"{path}.resources.limits[{resources.GPU}]",
                    f"{c.count} slices need {c.count} distinct GPUs; {where} {most}; write at most {most}{hint}",
                )
            )
    if request.models and limits.models and not request.models & limits.models:
        errors.append(
            FieldError(
                f"metadata.annotations[{resources.GPU_MODEL}]",
                f"no GPU of model {', '.join(sorted(request.models))} in the pool; "
                f"known models: {', '.join(sorted(limits.models))}",
            )
        )
    return errors


def _privileged(pod: Mapping[str, Any], request: PodRequest) -> list[FieldError]:
    spec = pod.get("spec") or {}
    errors: list[FieldError] = []
    for c in request.containers:
        kind = "initContainers" if c.init else "containers"
        container = (spec.get(kind) or [])[c.index]
        if ((container.get("securityContext") or {}).get("privileged")) is True:
            errors.append(
                FieldError(
                    f"{_path(c.init, c.index)}.securityContext.privileged",
                    "a privileged container sees every GPU of the node, not its slices; "
                    "remove privileged: true (or ask the admin to allow privileged slices)",
                )
            )
    return errors


def _runtime_env(pod: Mapping[str, Any]) -> list[FieldError]:
    """Environment variables gpupool owns (`resources.is_runtime_env`), set by any container of the pod.

    `env` is refused by name. `envFrom` keys live in ConfigMaps and Secrets that admission does not read;
    only an `envFrom.prefix` that itself lands in gpupool's names is refused.
    """
    errors: list[FieldError] = []
    spec = pod.get("spec") or {}
    for init, kind in ((True, "initContainers"), (False, "containers")):
        for i, container in enumerate(spec.get(kind) or []):
            for j, item in enumerate(container.get("env") or []):
                name = str(item.get("name") or "")
                if resources.is_runtime_env(name):
                    errors.append(
                        FieldError(
                            f"{_path(init, i)}.env[{j}] ({name})",
                            f"{name} is set by gpupool to confine the container to its GPU slices; remove it",
                        )
                    )
            for j, item in enumerate(container.get("envFrom") or []):
                prefix = str(item.get("prefix") or "")
                if prefix and (resources.is_runtime_env(prefix) or any(
                    p.startswith(prefix) for p in (*resources.RUNTIME_ENV, *resources.RUNTIME_ENV_PREFIXES)
                )):  # fmt: skip
                    errors.append(
                        FieldError(
                            f"{_path(init, i)}.envFrom[{j}].prefix",
                            f"{prefix!r} would import variables gpupool sets to confine the container; "
                            "choose another prefix",
                        )
                    )
    return errors


def rejection_message(errors: Sequence[FieldError]) -> str:
    return "gpupool: " + "; ".join(str(e) for e in errors)


# --- tenancy: queue membership and the fields fixed at admission (docs/contracts.md) ----------------------

#: given a namespace and the queue a pod names: why the pod may not use it (None: it may)
QueueProblem = Callable[[str, str], "str | None"]


def tenancy_errors(
    pod: Mapping[str, Any],
    *,
    old: Mapping[str, Any] | None = None,
    operation: str = "CREATE",
    queue_problem: QueueProblem | None = None,
) -> list[FieldError]:
    """Refusals that keep tenants apart: a queue the pod's namespace may not use, an edit after admission.

    `queue_problem` is the controller's `QueueManager.membership_problem` (None while its cache is not
    built: the queue manager still refuses to charge such a pod, it waits with the reason instead).
    """
    errors: list[FieldError] = []
    if operation == "UPDATE" and old is not None and not objects.pod_gated(old):
        errors.extend(_accounting_edits(pod, old))
    named = _annotations(pod).get(resources.QUEUE)
    renamed = old is not None and objects.pod_gated(old) and named != _annotations(old).get(resources.QUEUE)
    checked = operation == "CREATE" or (operation == "UPDATE" and renamed)
    if checked and named and queue_problem is not None:
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        problem = queue_problem(namespace, str(named))
        if problem is not None:
            errors.append(FieldError(f"metadata.annotations[{resources.QUEUE}]", problem))
    return errors


#: given a pod: the field and why it does not match the pod group it joins (None: it does)
GroupProblem = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]


def group_errors(pod: Mapping[str, Any], *, operation: str = "CREATE",
                 group_problem: GroupProblem | None = None) -> list[FieldError]:  # fmt: skip
    """A new pod whose pod group's members ask for another min-members, queue or priority is refused
    (`Controller.group_problem`; docs/workloads.md). Groups inferred from owners are checked by the
    admission cycle instead, which reports them."""
    if operation != "CREATE" or group_problem is None:
        return []
    found = group_problem(pod)
    return [] if found is None else [FieldError(*found)]


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def accounting_fields(pod: Mapping[str, Any]) -> dict[str, object]:
    """Every field that decides a pod's accounting, by path: its gpupool annotations and resources."""
    out: dict[str, object] = {}
    annotations = _annotations(pod)
    for key in resources.USER_ANNOTATIONS:
        out[f"metadata.annotations[{key}]"] = annotations.get(key)
    names = set(resources.CANONICAL) | set(resources.ALIASES)
    spec = pod.get("spec") or {}
    for init, kind in ((True, "initContainers"), (False, "containers")):
        for i, container in enumerate(spec.get(kind) or []):
            res = container.get("resources") or {}
            for section in ("limits", "requests"):
                values = res.get(section) or {}
                for name in sorted(names & set(values)):
                    out[f"{_path(init, i)}.resources.{section}[{name}]"] = str(values[name])
    return out


def _accounting_edits(pod: Mapping[str, Any], old: Mapping[str, Any]) -> list[FieldError]:
    new_fields, old_fields = accounting_fields(pod), accounting_fields(old)
    errors = []
    for path in sorted(set(new_fields) | set(old_fields)):
        before = old_fields.get(path)
        if new_fields.get(path) != before:
            keep = "leave it out" if before is None else f"keep {before!r}"
            errors.append(FieldError(path, "is fixed once gpupool admitted the pod (it decides the pod's queue, "
                                           f"quota and slices); {keep}, or delete and recreate the pod"))  # fmt: skip
    return errors
