"""A client of the kubelet's PodResources API (``v1.PodResourcesLister/List``): which devices the kubelet
itself recorded for each container. Used to check that the kubelet's record agrees with gpupool's assignments.

The messages are built from a descriptor here (only the fields read; protobuf skips the others), so no .proto
file or code generation is needed. Field numbers: k8s.io/kubelet pkg/apis/podresources/v1/api.proto.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "gpupool.e2e.podresources.v1"  # a private name: the wire format does not carry it

_T = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="gpupool_e2e_podresources_v1.proto", package=_PACKAGE, syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            fd = m.field.add(name=fname, number=number, type=ftype)
            fd.label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
            if type_name:
                fd.type_name = f".{_PACKAGE}.{type_name}"

    message("ListPodResourcesRequest")
    message("ContainerDevices", ("resource_name", 1, _T.TYPE_STRING, None, False),
            ("device_ids", 2, _T.TYPE_STRING, None, True))  # fmt: skip
    message("ContainerResources", ("name", 1, _T.TYPE_STRING, None, False),
            ("devices", 2, _T.TYPE_MESSAGE, "ContainerDevices", True))  # fmt: skip
    message("PodResources", ("name", 1, _T.TYPE_STRING, None, False), ("namespace", 2, _T.TYPE_STRING, None, False),
            ("containers", 3, _T.TYPE_MESSAGE, "ContainerResources", True))  # fmt: skip
    message("ListPodResourcesResponse", ("pod_resources", 1, _T.TYPE_MESSAGE, "PodResources", True))
    message("AllocatableResourcesRequest")
    message("AllocatableResourcesResponse", ("devices", 1, _T.TYPE_MESSAGE, "ContainerDevices", True))
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_Request: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.ListPodResourcesRequest"))
_Response: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.ListPodResourcesResponse"))
_AllocRequest: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.AllocatableResourcesRequest")
)
_AllocResponse: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.AllocatableResourcesResponse")
)

#: (namespace, pod, container) -> resource name -> device ids, as the kubelet recorded them
PodDevices = dict[tuple[str, str, str], dict[str, list[str]]]


def _call(socket: Path, method: str, request: Any, response: Any, timeout: float) -> Any:
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        call: Callable[..., Any] = channel.unary_unary(
            f"/v1.PodResourcesLister/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return call(request(), timeout=timeout)


def allocatable(socket: Path, timeout: float = 10.0) -> dict[str, list[str]]:
    """``GetAllocatableResources``: resource -> the device ids the kubelet holds healthy and registered now."""
    out: dict[str, list[str]] = {}
    for d in _call(socket, "GetAllocatableResources", _AllocRequest, _AllocResponse, timeout).devices:
        out.setdefault(d.resource_name, []).extend(d.device_ids)
    return out


def list_devices(socket: Path, timeout: float = 10.0) -> PodDevices:
    """``List`` on the kubelet's ``pod-resources/kubelet.sock``: every container's devices (sorted ids)."""
    response = _call(socket, "List", _Request, _Response, timeout)
    out: PodDevices = {}
    for pod in response.pod_resources:
        for c in pod.containers:
            devices = out.setdefault((pod.namespace, pod.name, c.name), {})
            for d in c.devices:
                devices.setdefault(d.resource_name, []).extend(d.device_ids)
    for devices in out.values():
        for ids in devices.values():
            ids.sort()
    return out
