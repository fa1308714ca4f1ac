"""Every test under tests/<tier>/ carries that tier's marker (declared in pyproject.toml), so `-m` selects tiers."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TIER_MARKERS = ("e2e", "extender", "controller", "deviceplugin", "helm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(HERE).parts
        if len(parts) > 1 and parts[0] in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
