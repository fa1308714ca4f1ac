"""The v1beta1 stubs: generated from api.proto, and wire-identical to the kubelet's own proto."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from deviceplugin import api


def test_stubs_are_generated_when_missing(tmp_path: Path) -> None:
    for path in api.GENERATED:
        shutil.copy(path, tmp_path / path.name)
    try:
        for path in api.GENERATED:
            path.unlink()
        assert api.stubs_stale()
        written = api.generate()
        assert sorted(p.name for p in written) == ["api_pb2.py", "api_pb2_grpc.py"]
        assert not api.stubs_stale()
        text = (api.API_DIR / "api_pb2_grpc.py").read_text()
        assert "from . import api_pb2 as api__pb2" in text
        # a fresh interpreter can import them
        out = subprocess.run(
            [os.sys.executable, "-c", "from deviceplugin.api import pb2; print(pb2.DESCRIPTOR.package)"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(api.__file__).resolve().parents[2],
        )
        assert out.stdout.strip() == "v1beta1"
    finally:
        for path in api.GENERATED:
            if not path.exists():
                shutil.copy(tmp_path / path.name, path)


def test_stubs_regenerate_when_the_proto_is_newer() -> None:
    stat = api.PROTO.stat()
    try:
        os.utime(api.PROTO, (stat.st_atime, max(p.stat().st_mtime for p in api.GENERATED) + 10))
        assert api.stubs_stale()
        assert api.generate()
        assert not api.stubs_stale()
    finally:
        os.utime(api.PROTO, (stat.st_atime, stat.st_mtime))


def test_package_services_and_messages() -> None:
    d = api.pb2.DESCRIPTOR
    assert d.package == "v1beta1"
    assert set(d.services_by_name) == {"Registration", "DevicePlugin"}
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in d.services_by_name["DevicePlugin"].methods}
    assert methods == {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions"),
        "ListAndWatch": ("Empty", "ListAndWatchResponse"),
        "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse"),
        "Allocate": ("AllocateRequest", "AllocateResponse"),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse"),
    }
    fields = {f.name: f.number for f in d.message_types_by_name["ContainerAllocateResponse"].fields}
    assert fields == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}


def _gomodcache_proto() -> Path | None:
    go = shutil.which("go")
    candidates = []
    if go:
        try:
            out = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, timeout=30)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    candidates.append(Path.home() / "go/pkg/mod")
    for base in candidates:
        path = base / "k8s.io/kubelet@v0.36.3/pkg/apis/deviceplugin/v1beta1/api.proto"
        if path.exists():
            return path
    return None


def _descriptor(proto: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        rc = protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", str(proto)])
        assert rc == 0, f"protoc failed on {proto}"
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


def _shape(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    messages = {}

    def walk(prefix: str, msgs: object) -> None:
        for m in msgs:  # type: ignore[attr-defined]
            messages[prefix + m.name] = sorted((f.name, f.number, f.type, f.label, f.type_name) for f in m.field)
            walk(prefix + m.name + ".", m.nested_type)

    walk("", fd.message_type)
    services = {
        s.name: sorted((m.name, m.input_type, m.output_type, m.server_streaming, m.client_streaming) for m in s.method)
        for s in fd.service
    }
    return {"package": fd.package, "messages": messages, "services": services}


def test_wire_identical_to_the_kubelets_proto() -> None:
    real = _gomodcache_proto()
    if real is None:
        pytest.skip("k8s.io/kubelet@v0.36.3 is not in the Go module cache (go mod download k8s.io/kubelet@v0.36.3)")
    assert _shape(_descriptor(api.PROTO)) == _shape(_descriptor(real))
