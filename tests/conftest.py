"""Shared pytest fixtures for shardsync's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardsync.daemon.origin import Origin


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """A started :class:`Origin` serving ``tmp_path / "origin"`` (created empty); stopped after."""
    root = tmp_path / "origin"
    root.mkdir()
    with Origin(root) as server:
        yield server
