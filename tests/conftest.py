"""Shared pytest fixtures for shardsync's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from storehelpers import store_at

from shardsync.store import Store


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """A started :class:`Origin` serving ``tmp_path / "origin"`` (created empty); stopped after."""
    root = tmp_path / "origin"
    root.mkdir()
    with Origin(root) as server:
        yield server


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(state_dir, site_dir) under the test's tmp dir, not yet created."""
    return tmp_path / "state", tmp_path / "site"


@pytest.fixture
def store(dirs: tuple[Path, Path]) -> Iterator[Store]:
    """A Store on ``dirs`` with default settings, closed after the test."""
    with store_at(*dirs) as s:
        yield s
