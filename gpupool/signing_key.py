"""Reading the cluster's signing keys (the Secret that keys `gpupool.assignment` signatures).

Adapter-side: the pure pool model never reads files. The extender, the controller, the node
agent and the CLI all read the keys here, so a missing or empty key fails the same way. The
layout of the mounted Secret (one signing key, any number of verification keys, by id) is in
docs/contracts.md "signing keys"; `KeyRing` re-reads it when the kubelet updates the mount.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from gpupool.assignment import KID_PATTERN, LEGACY_KID, KeySet
from gpupool.errors import AssignmentError

log = logging.getLogger("gpupool.signing")

#: the mounted Secret (a directory); a path to one file is the single-key layout
DEFAULT_PATH = "/etc/gpupool/signing"
#: the Secret's entries: `key` (id `default`), `key.<kid>`, and `signing-kid` naming the signing key
LEGACY_FILE = "key"
KEY_PREFIX = "key."
SIGNING_KID_FILE = "signing-kid"


def read_signing_key(path: str | Path) -> bytes:
    """The key in file `path`, without surrounding whitespace; `AssignmentError` saying what to fix otherwise."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AssignmentError(f"cannot read the signing key {path}: {exc} (mount the gpupool signing Secret)") from None
    if not key:
        raise AssignmentError(f"the signing key file {path} is empty; mount the gpupool signing Secret")
    return key


def read_keys(path: str | Path) -> KeySet:
    """The keys at `path`: a directory in the Secret layout, or one key file (id `default`)."""
    root = Path(path)
    if not root.is_dir():
        return KeySet.single(read_signing_key(root))
    keys: dict[str, bytes] = {}
    try:
        names = sorted(n for n in os.listdir(root) if not n.startswith("."))
    except OSError as exc:
        raise AssignmentError(f"cannot list the signing keys in {root}: {exc}") from None
    for name in names:
        if name == LEGACY_FILE:
            kid = LEGACY_KID
        elif name.startswith(KEY_PREFIX):
            kid = name[len(KEY_PREFIX):]
            if not KID_PATTERN.fullmatch(kid):
                raise AssignmentError(f"{root / name}: the key id {kid!r} must match {KID_PATTERN.pattern}")
        else:
            continue
        if kid in keys:
            raise AssignmentError(f"{root}: key id {kid!r} is given twice (`key` is the key with id `default`)")
        keys[kid] = read_signing_key(root / name)
    if not keys:
        raise AssignmentError(
            f"no signing key in {root}: expected `key` or `key.<id>` entries (mount the gpupool signing Secret)"
        )
    kid_file = root / SIGNING_KID_FILE
    if kid_file.exists():
        signing = read_signing_key(kid_file).decode(errors="replace")
    elif len(keys) == 1:
        signing = next(iter(keys))
    elif LEGACY_KID in keys:
        signing = LEGACY_KID
    else:
        raise AssignmentError(f"{root}: several keys ({', '.join(sorted(keys))}) and no `{SIGNING_KID_FILE}` "
                              "naming the one that signs")  # fmt: skip
    if signing not in keys:
        raise AssignmentError(
            f"{kid_file}: names key id {signing!r}, but the keys are {', '.join(sorted(keys))}; add `key.{signing}`"
        )
    return KeySet.of(keys, signing)


class KeyRing:
    """The keys of a mounted Secret, re-read by `refresh` when its files change (a `KeySource`).

    `current()` never touches the disk (hot paths call it); the owner calls `refresh()` now and
    then (`watch`). A change that cannot be read keeps the last good keys and is logged.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._fingerprint()
        self._keys = read_keys(self.path)
        self.generation = 0  # bumped on every change that was read

    def current(self) -> KeySet:
        return self._keys

    def _fingerprint(self) -> tuple[object, ...]:
        """What changes when the kubelet swaps the Secret's files (its `..data` link) or a file is rewritten."""
        try:
            if not self.path.is_dir():
                st = self.path.stat()
                return (st.st_mtime_ns, st.st_size, st.st_ino)
            out: list[object] = [os.path.realpath(self.path / "..data")]
            for name in sorted(os.listdir(self.path)):
                if name.startswith("."):
                    continue
                st = (self.path / name).stat()
                out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
            return tuple(out)
        except OSError as exc:
            return ("unreadable", str(exc))

    def refresh(self) -> bool:
        """Re-read the keys if their files changed; True when the keys changed."""
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return False
        try:
            keys = read_keys(self.path)
        except AssignmentError as exc:
            log.error("signing keys at %s changed but cannot be read; keeping the previous ones: %s", self.path, exc)
            return False  # retried at the next refresh: the stamp is not taken
        self._stamp = stamp
        if keys == self._keys:
            return False
        self._keys = keys
        self.generation += 1
        log.info("signing keys re-read: signing key id %s, verification key ids %s", keys.signing, ", ".join(keys.kids))
        return True

    def watch(
        self, stop: threading.Event, on_change: Callable[[], None] | None = None, interval: float = 2.0
    ) -> threading.Thread:
        """A daemon thread calling `refresh` every `interval` seconds, and `on_change()` after a change."""

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    if self.refresh() and on_change is not None:
                        on_change()
                except Exception:  # one bad read never ends the watch
                    log.exception("re-reading the signing keys failed")

        thread = threading.Thread(target=loop, name="signing-keys", daemon=True)
        thread.start()
        return thread
