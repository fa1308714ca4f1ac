"""The signing Secret's layout (docs/contracts.md "signing keys") and its re-reading on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpupool.assignment import LEGACY_KID, KeySet
from gpupool.errors import AssignmentError
from gpupool.signing_key import KeyRing, read_keys


def mount(root: Path, files: dict[str, str], version: int) -> None:
    """What the kubelet does to a Secret volume: files in a fresh `..<version>` dir, `..data` swapped to it,
    and one link per entry through `..data`."""
    target = root / f"..v{version}"
    target.mkdir()
    for name, value in files.items():
        (target / name).write_text(value)
    tmp = root / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, root / "..data")
    for name in os.listdir(root):
        if not name.startswith(".") and name not in files:
            (root / name).unlink()
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_layouts(tmp_path: Path) -> None:
    (tmp_path / "one").write_text("only\n")
    assert read_keys(tmp_path / "one") == KeySet.single(b"only")  # a key file: today's single-key layout
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    mount(legacy, {"key": "k0"}, 1)
    assert read_keys(legacy) == KeySet.single(b"k0")
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    mount(rotated, {"key": "k0", "key.k2": "two", "signing-kid": "k2\n"}, 1)
    keys = read_keys(rotated)
    assert keys.signing == "k2" and keys.kids == (LEGACY_KID, "k2") and keys.signing_key == b"two"
    single = tmp_path / "single"
    single.mkdir()
    mount(single, {"key.k3": "three"}, 1)
    assert read_keys(single).signing == "k3"  # one key: it signs


@pytest.mark.parametrize(
    ("files", "needle"),
    [({}, "no signing key"), ({"key.k1": "a", "key.k2": "b"}, "no `signing-kid`"),
     ({"key.k1": "a", "signing-kid": "k9"}, "names key id 'k9'"), ({"key.bad id": "a"}, "must match"),
     ({"key": "a", "key.default": "b"}, "given twice"), ({"key.k1": "\n"}, "is empty")],
)  # fmt: skip
def test_bad_layouts_name_what_to_fix(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    mount(tmp_path, files, 1)
    with pytest.raises(AssignmentError, match=needle):
        read_keys(tmp_path)


def test_keyring_rereads_a_changed_secret_and_keeps_the_last_good_keys(tmp_path: Path) -> None:
    mount(tmp_path, {"key": "k0"}, 1)
    ring = KeyRing(tmp_path)
    assert ring.current() == KeySet.single(b"k0") and not ring.refresh()
    mount(tmp_path, {"key": "k0", "key.k2": "two"}, 2)  # step 1: add a verification key
    assert ring.refresh() and ring.current().kids == (LEGACY_KID, "k2") and ring.current().signing == LEGACY_KID
    mount(tmp_path, {"key": "k0", "key.k2": "two", "signing-kid": "bogus"}, 3)  # a typo: kept, logged
    assert not ring.refresh() and ring.current().signing == LEGACY_KID
    mount(tmp_path, {"key": "k0", "key.k2": "two", "signing-kid": "k2"}, 4)  # step 2: switch
    assert ring.refresh() and ring.current().signing == "k2"
    mount(tmp_path, {"key.k2": "two", "signing-kid": "k2"}, 5)  # step 3: retire
    assert ring.refresh() and ring.current().kids == ("k2",) and ring.generation == 3
