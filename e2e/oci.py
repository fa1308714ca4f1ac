"""Container images without a registry: an OCI image-layout tarball built from Debian's static busybox.

One layer (``/bin/busybox`` and its applet links) serves two images: the pause image containerd runs for every
pod sandbox, and the test image whose containers print what they received. An image may add a second layer of
host files (:func:`gpuprog_image`: the runtime's test program, the fake driver and the glibc they load).
``ctr images import`` reads the tarball; the ``io.containerd.image.name`` annotation names each image. Why and
how: docs/e2e.md (real node).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "env", "sleep", "cat", "echo", "ls", "true", "sort", "grep", "printenv", "wc")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TEST_IMAGE = "docker.io/gpupool/busybox:1"  # a pod asks for "gpupool/busybox:1" (imagePullPolicy: Never)
GPUPROG_IMAGE = "docker.io/gpupool/gpuprog:1"  # busybox + gpuprog on the fake driver (gpuprog_image)
LIB_DIR = "lib/x86_64-linux-gnu"  # where the image's dynamic loader finds the fake libcuda.so.1 (a system dir)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Image:
    """One image of the tarball: its full name and its process."""

    name: str
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    #: a second layer: path in the image -> host file copied there (mode kept)
    files: Mapping[str, Path] | None = None


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


def files_layer(files: Mapping[str, Path]) -> bytes:
    """A layer holding each host file at its path in the image (symlinks followed), with its parent directories."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})
    for d in dirs:
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        members.append((info, None))
    for name, source in sorted(files.items()):
        data = source.read_bytes()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = source.stat().st_mode & 0o777
        members.append((info, data))
    return _tar_bytes(members)


def shared_objects(programs: Sequence[Path]) -> dict[str, Path]:
    """The libraries ``ldd`` says *programs* load (the loader included): path in the image -> host file."""
    out: dict[str, Path] = {}
    for program in programs:
        r = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines():
            words = line.split()
            path = words[2] if len(words) > 2 and words[1] == "=>" else words[0] if words else ""
            if path.startswith("/"):
                out[path.lstrip("/")] = Path(path).resolve()
    return out


def gpuprog_image(build: Path) -> Image:
    """The runtime's end-to-end image: ``/bin/gpuprog`` (dynamic, so ``/etc/ld.so.preload`` applies) linked
    against the fake driver at ``/lib/x86_64-linux-gnu/libcuda.so.1``, the host's glibc files that both load
    (``ldd``), on the busybox layer. *build*: ``runtime/build`` after ``make -C runtime test-bin``."""
    prog, fake = build / "gpuprog", build / "fake" / "libcuda.so.1"
    files = {f"{LIB_DIR}/libcuda.so.1": fake, "bin/gpuprog": prog}
    deps = shared_objects([prog, fake, build / "libgpupool.so"])
    return Image(GPUPROG_IMAGE, cmd=("/bin/gpuprog",), files=deps | files)


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def image_layout(images: Sequence[Image] = IMAGES, busybox: Path = BUSYBOX) -> bytes:
    """An OCI image-layout tarball holding *images*, all on the one busybox layer (plus each one's files)."""
    blobs: dict[str, bytes] = {}
    layer = busybox_layer(busybox)
    layer_ref = {"mediaType": LAYER, **_blob(blobs, layer)}
    manifests: list[Mapping[str, object]] = []
    for image in images:
        layers = [layer_ref]
        if image.files:
            layers.append({"mediaType": LAYER, **_blob(blobs, files_layer(image.files))})
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                **({"Entrypoint": list(image.entrypoint)} if image.entrypoint else {}),
                **({"Cmd": list(image.cmd)} if image.cmd else {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [ref["digest"] for ref in layers]},
        }
        config_ref = {"mediaType": CONFIG, **_blob(blobs, json.dumps(config, sort_keys=True).encode())}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_ref, "layers": layers}
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
