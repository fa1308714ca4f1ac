"""The registry-free images of the real node (no root, no containerd needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from e2e import oci

pytestmark = pytest.mark.realnode


def test_the_image_layout_names_both_images_and_every_blob_matches_its_digest(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF not really busybox")
    with tarfile.open(fileobj=io.BytesIO(oci.image_layout(busybox=fake))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == [oci.PAUSE_IMAGE, oci.TEST_IMAGE]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][1]["digest"].removeprefix("sha256:")])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].removeprefix("sha256:")]
    with tarfile.open(fileobj=io.BytesIO(layer)) as rootfs:
        members = {m.name: m for m in rootfs.getmembers()}
    assert members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")])
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]


def test_an_image_with_files_gets_a_second_layer_holding_them(tmp_path: Path) -> None:
    fake, prog = tmp_path / "busybox", tmp_path / "prog"
    fake.write_bytes(b"\x7fELF not really busybox")
    prog.write_bytes(b"\x7fELF a program")
    prog.chmod(0o750)
    image = oci.Image("docker.io/gpupool/x:1", files={"bin/prog": prog, "lib/x86_64-linux-gnu/libz.so.1": fake})
    with tarfile.open(fileobj=io.BytesIO(oci.image_layout([image], busybox=fake))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    (entry,) = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].removeprefix("sha256:")])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")])
    assert len(manifest["layers"]) == 2
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    second = files["blobs/sha256/" + manifest["layers"][1]["digest"].removeprefix("sha256:")]
    with tarfile.open(fileobj=io.BytesIO(second)) as rootfs:
        members = {m.name: m for m in rootfs.getmembers()}
    assert members["bin/prog"].mode == 0o750 and members["lib/x86_64-linux-gnu/libz.so.1"].isfile()
    assert members["lib"].isdir() and members["lib/x86_64-linux-gnu"].isdir()
    assert second.count(b"\x7fELF a program") == 1


def test_shared_objects_names_the_loader_and_libc_of_a_dynamic_program() -> None:
    deps = oci.shared_objects([Path("/bin/ls")])
    assert any(name.startswith("lib64/ld-linux") or "/ld-linux" in name for name in deps), deps
    assert any(name.endswith("/libc.so.6") for name in deps), deps
    assert all(path.is_file() and not path.is_symlink() for path in deps.values())
