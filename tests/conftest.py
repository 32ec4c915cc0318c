"""Shared pytest fixtures for shardsync's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from controlhelpers import short_sockdir, start_server
from origin import Origin
from servicehelpers import NotifySocket, short_dir
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


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for Unix sockets (their paths are limited to 108 bytes)."""
    yield from short_sockdir()


@pytest.fixture
async def served(nursery: trio.Nursery, sockdir: str) -> SimpleNamespace:
    """The test control server (tests/controlhelpers.py) on a socket in ``sockdir``."""
    return await start_server(nursery, os.path.join(sockdir, "control.sock"))


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for a service's control socket and notify socket (see sockdir)."""
    with short_dir() as d:
        yield d


@pytest.fixture
def notify(sockets: Path) -> Iterator[NotifySocket]:
    """A stand-in for systemd's $NOTIFY_SOCKET in ``sockets``, closed after the test."""
    ns = NotifySocket(sockets / "notify")
    yield ns
    ns.close()
