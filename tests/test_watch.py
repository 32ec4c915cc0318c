"""The config watcher on a real directory (inotify through watchdog), on the real clock.

Each save must cause exactly one notification however the editor writes the file
(rename over it, or rewrite it in place), and reading the file (which the reload
itself does) must cause none, or a reload would trigger the next one forever.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from shardsync.daemon.config import load_config
from shardsync.daemon.watch import DEBOUNCE, watch_file

#: Silence after which no more notifications are expected: five debounce periods.
QUIET = 5 * DEBOUNCE
#: The first notification of a change: generous, the machine is shared.
FIRST = 20.0

CONFIG = 'state_dir = "state"\ninterval = "{interval}"\n'


class Watched:
    def __init__(self, path: Path, receive: trio.MemoryReceiveChannel[None]) -> None:
        self.path = path
        self.receive = receive

    async def count(self, *, expect_one: bool) -> int:
        """Notifications until QUIET seconds pass without one (waiting up to FIRST for the
        first one when ``expect_one``)."""
        n = 0
        if expect_one:
            with trio.fail_after(FIRST):
                await self.receive.receive()
            n = 1
        while True:
            with trio.move_on_after(QUIET):
                await self.receive.receive()
                n += 1
                continue
            return n


@asynccontextmanager
async def watching(tmp_path: Path) -> AsyncIterator[Watched]:
    path = tmp_path / "shardsync.toml"
    path.write_text(CONFIG.format(interval="30m"))
    send, receive = trio.open_memory_channel[None](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_file, path, send)
        yield Watched(path, receive)
        nursery.cancel_scope.cancel()


def rename_over(path: Path, text: str) -> None:
    """Save as vim and most editors do: a new file beside it, renamed over it."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_rename_over_edit_is_one_notification(tmp_path: Path):
    async with watching(tmp_path) as w:
        rename_over(w.path, CONFIG.format(interval="10m"))
        assert await w.count(expect_one=True) == 1
        # The watch survives the inode change: the next save is seen too.
        rename_over(w.path, CONFIG.format(interval="20m"))
        assert await w.count(expect_one=True) == 1


async def test_in_place_edit_is_one_notification(tmp_path: Path):
    async with watching(tmp_path) as w:
        with open(w.path, "w") as f:  # truncate, then two writes: several inotify events
            f.write("state_dir = 'state'\n")
            f.flush()
            f.write("interval = '5m'\n")
        assert await w.count(expect_one=True) == 1
        with open(w.path, "a") as f:
            f.write("concurrency = 2\n")
        assert await w.count(expect_one=True) == 1


async def test_delete_and_recreate_is_one_notification(tmp_path: Path):
    async with watching(tmp_path) as w:
        w.path.unlink()
        w.path.write_text(CONFIG.format(interval="1h"))
        assert await w.count(expect_one=True) == 1


async def test_reading_the_file_is_no_notification(tmp_path: Path):
    async with watching(tmp_path) as w:
        w.path.read_bytes()
        load_config(w.path)  # what a reload does
        with open(w.path, "rb") as f:
            f.read()
        os.stat(w.path)
        assert await w.count(expect_one=False) == 0


async def test_other_files_in_the_directory_are_ignored(tmp_path: Path):
    async with watching(tmp_path) as w:
        (tmp_path / "other.toml").write_text("x = 1\n")
        rename_over(tmp_path / "notes.txt", "hello\n")
        (tmp_path / "sub").mkdir()
        assert await w.count(expect_one=False) == 0
        rename_over(w.path, CONFIG.format(interval="2h"))  # and the watch still works
        assert await w.count(expect_one=True) == 1
