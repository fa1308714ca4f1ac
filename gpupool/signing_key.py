"""Reading the cluster's signing key (the Secret that keys `gpupool.assignment` signatures).

Adapter-side: the pure pool model never reads files. The extender, the controller, the node
agent and the CLI all read the key here, so a missing or empty key fails the same way.
"""

from __future__ import annotations

from pathlib import Path

from gpupool.errors import AssignmentError

DEFAULT_PATH = "/etc/gpupool/signing/key"


def read_signing_key(path: str | Path) -> bytes:
    """The key in `path`, without surrounding whitespace; `AssignmentError` saying what to fix otherwise."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AssignmentError(f"cannot read the signing key {path}: {exc} (mount the gpupool signing Secret)") from None
    if not key:
        raise AssignmentError(f"the signing key file {path} is empty; mount the gpupool signing Secret")
    return key
