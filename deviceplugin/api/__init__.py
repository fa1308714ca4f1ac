"""The kubelet device plugin API v1beta1 (``api.proto`` in this directory) as Python gRPC stubs.

The stubs ``api_pb2.py`` / ``api_pb2_grpc.py`` are generated here by grpcio-tools on first import, and again
whenever ``api.proto`` is newer than them; they are git-ignored. Generation writes to temporary files and
renames them into place, so concurrent first imports (test workers, several processes) are safe.

Constants mirror ``k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from types import ModuleType

API_DIR = Path(__file__).resolve().parent
PROTO = API_DIR / "api.proto"
GENERATED = (API_DIR / "api_pb2.py", API_DIR / "api_pb2_grpc.py")

VERSION = "v1beta1"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
KUBELET_SOCKET_NAME = "kubelet.sock"
KUBELET_SOCKET = DEVICE_PLUGIN_PATH + KUBELET_SOCKET_NAME
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
PRE_START_CONTAINER_TIMEOUT_S = 30


class StubGenerationError(RuntimeError):
    """grpcio-tools could not compile api.proto."""


def stubs_stale() -> bool:
    """True when a stub is missing or older than api.proto."""
    proto_mtime = PROTO.stat().st_mtime
    return any(not p.exists() or p.stat().st_mtime < proto_mtime for p in GENERATED)


def generate(force: bool = False) -> list[Path]:
    """(Re)generate the stubs next to api.proto; returns the files written (empty when up to date)."""
    if not force and not stubs_stale():
        return []
    if not force and all(p.exists() for p in GENERATED) and not os.access(API_DIR, os.W_OK):
        return []  # an installed, read-only copy (the image) keeps the stubs it was built with
    from grpc_tools import protoc  # build-time dependency, imported only when needed

    with tempfile.TemporaryDirectory(prefix="dpapi") as tmp:
        include = Path(protoc.__file__).resolve().parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{API_DIR}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO),
            ]
        )
        if rc != 0:
            raise StubGenerationError(f"grpc_tools.protoc failed with status {rc} on {PROTO}")
        written = []
        for target in GENERATED:
            text = (Path(tmp) / target.name).read_text()
            # protoc emits `import api_pb2 as api__pb2`; make it relative to this package
            text = re.sub(r"^import api_pb2 as api__pb2$", "from . import api_pb2 as api__pb2", text, flags=re.M)
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=API_DIR)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(partial, target)
            proto_mtime = PROTO.stat().st_mtime
            if target.stat().st_mtime < proto_mtime:  # a proto stamped in the future (clock skew, tests)
                os.utime(target, (proto_mtime, proto_mtime))
            written.append(target)
    return written


generate()

from . import api_pb2, api_pb2_grpc  # noqa: E402

pb2: ModuleType = api_pb2
pb2_grpc: ModuleType = api_pb2_grpc

__all__ = [
    "DEVICE_PLUGIN_PATH",
    "HEALTHY",
    "KUBELET_SOCKET",
    "KUBELET_SOCKET_NAME",
    "PRE_START_CONTAINER_TIMEOUT_S",
    "UNHEALTHY",
    "VERSION",
    "api_pb2",
    "api_pb2_grpc",
    "generate",
    "pb2",
    "pb2_grpc",
    "stubs_stale",
]
