"""CUDA graphs and cooperative launches share the token bucket; IPC-imported memory is the exporter's
(docs/runtime.md "Compute", "Memory")."""

from __future__ import annotations

import pytest

from tests.runtime.conftest import Node

MIB = 1 << 20
KERNEL_US = 5000


@pytest.mark.parametrize("via", ["graph", "graph-ptsz", "coop", "coop-ptsz"])
def test_graph_and_cooperative_launches_are_held_to_the_share(node: Node, via: str) -> None:
    """A lone ceiling container at 30 %: without interception these paths would run at 100 %."""
    c = node.container(memory_mib=[1], compute=[30], mode="ceiling")
    p = c.start()
    word, busy, window = p.cmd(f"spin {KERNEL_US} 2.5 0.8 {via}").split()
    assert word == "spin" and int(window) > 0
    share = 100.0 * int(busy) / int(window)
    assert abs(share - 30) <= 5, share
    assert c.accounting().devices[0].busy_ns > 0  # measured, hence charged to the container


def test_ipc_imported_memory_is_charged_to_the_exporter_only(node: Node) -> None:
    a = node.container(memory_mib=[1])
    b = node.container(memory_mib=[1])
    exporter, importer = a.start(), b.start()
    shared = exporter.alloc(MIB)
    assert shared is not None
    word, handle = exporter.cmd(f"export {shared}").split()
    assert word == "handle"
    assert importer.alloc(MIB) is not None  # the importer's own slice is full
    out = importer.cmd(f"import {handle}")
    assert out.startswith("ok "), out  # mapping the exporter's memory takes none of the importer's slice
    assert importer.info() == (0, MIB)
    assert b.accounting().devices[0].memory_used_bytes == MIB
    assert a.accounting().devices[0].memory_used_bytes == MIB
    assert importer.cmd(f"free {out.split()[1]}") == "ok"  # cuIpcCloseMemHandle releases nothing of b's
    assert b.accounting().devices[0].memory_used_bytes == MIB
    assert exporter.cmd(f"free {shared}") == "ok"
    assert a.accounting().devices[0].memory_used_bytes == 0
