"""Container images without a registry: an OCI image-layout tarball built from Debian's static busybox.

One layer (``/bin/busybox`` and its applet links) serves two images: the pause image containerd runs for every
pod sandbox, and the test image whose containers print what they received. ``ctr images import`` reads the
tarball; the ``io.containerd.image.name`` annotation names each image. Why and how: docs/e2e.md (real node).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "env", "sleep", "cat", "echo", "ls", "true", "sort", "grep", "printenv", "wc")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TEST_IMAGE = "docker.io/gpupool/busybox:1"  # a pod asks for "gpupool/busybox:1" (imagePullPolicy: Never)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Image:
    """One image of the tarball: its full name and its process."""

    name: str
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()


IMAGES = (
    Image(PAUSE_IMAGE, entrypoint=("/bin/sleep", "2147483647")),
    Image(TEST_IMAGE, cmd=("/bin/sh",)),
)


def _tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = 0
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def busybox_layer(busybox: Path = BUSYBOX) -> bytes:
    """The root filesystem: /bin/busybox, a link per applet, and the directories runc mounts over."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "var/run"):
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o1777 if d == "tmp" else 0o755
        members.append((info, None))
    data = busybox.read_bytes()
    info = tarfile.TarInfo("bin/busybox")
    info.size = len(data)
    info.mode = 0o755
    members.append((info, data))
    for applet in APPLETS:
        info = tarfile.TarInfo(f"bin/{applet}")
        info.type = tarfile.SYMTYPE
        info.linkname = "busybox"
        info.mode = 0o777
        members.append((info, None))
    return _tar_bytes(members)


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def image_layout(images: Sequence[Image] = IMAGES, busybox: Path = BUSYBOX) -> bytes:
    """An OCI image-layout tarball holding *images*, all on the one busybox layer."""
    blobs: dict[str, bytes] = {}
    layer = busybox_layer(busybox)
    layer_ref = {"mediaType": LAYER, **_blob(blobs, layer)}
    manifests: list[Mapping[str, object]] = []
    for image in images:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                **({"Entrypoint": list(image.entrypoint)} if image.entrypoint else {}),
                **({"Cmd": list(image.cmd)} if image.cmd else {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_ref["digest"]]},
        }
        config_ref = {"mediaType": CONFIG, **_blob(blobs, json.dumps(config, sort_keys=True).encode())}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_ref, "layers": [layer_ref]}
        ref = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
        tag = image.name.rsplit(":", 1)[-1]
        manifests.append(
            {
                "mediaType": MANIFEST,
                **ref,
                "annotations": {"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag},
            }
        )
    index = {"schemaVersion": 2, "manifests": manifests}
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def file(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        members.append((info, data))

    file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    file("index.json", json.dumps(index, sort_keys=True).encode())
    for digest, data in sorted(blobs.items()):
        file(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return _tar_bytes(members)
