"""The e2e harness's fake nodes speak the node agent's fake-inventory format (no control plane needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from deviceplugin.inventory import load_fake_inventory
from e2e.nodes import DEFAULT_NODES, fake_inventory


def test_the_node_agent_reads_the_harness_inventory_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(fake_inventory(DEFAULT_NODES)))
    read = load_fake_inventory(path)
    assert set(read) == {n.name for n in DEFAULT_NODES}
    for node in DEFAULT_NODES:
        gpus = read[node.name]
        assert [(g.uuid, g.index, g.model, g.memory_mib, g.numa, g.healthy) for g in gpus] == [
            (e["uuid"], e["index"], e["model"], e["memoryMiB"], e["numa"], True) for e in node.inventory()
        ]
    a100 = read["gpu-a100-0"]
    assert [g.numa for g in a100] == [0, 0, 0, 0, 1, 1, 1, 1]
