"""Notice when the config file changes: watchdog on its directory, debounced, into trio.

Editors rarely write a file in place: vim and most others write a new file and
rename it over the old one, so watching the file's inode would miss the second
edit. We watch the directory and react to any event naming the file (modified,
created, moved onto it, deleted), then wait for :data:`DEBOUNCE` seconds of quiet so
that one save (often several events) causes one reload.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["DEBOUNCE", "watch_file"]

#: Quiet time after the last event before we act: editors emit several events per save
#: within a few milliseconds; 200 ms merges them without feeling slow to a person.
DEBOUNCE = 0.2


# Events that can change what the file holds. Not "opened" or "closed_no_write":
# reading the file on reload emits those, and reacting to them would loop.
_CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})


class _Handler(FileSystemEventHandler):
    def __init__(self, path: str, token: trio.lowlevel.TrioToken, poke: trio.MemorySendChannel[None]
                 ) -> None:
        self._path = path
        self._token = token
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return  # opened / closed-without-writing: our own reads of the file
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self._path in paths:
            try:
                self._token.run_sync_soon(self._send)
            except trio.RunFinishedError:
                pass

    def _send(self) -> None:
        try:
            self._poke.send_nowait(None)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a poke is already pending: one reload covers both


async def watch_file(path: Path, on_change: trio.MemorySendChannel[None],
                     *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Send ``None`` on ``on_change`` after each (debounced) change of ``path``, until cancelled.

    Calls ``task_status.started()`` once the watch is in place, so a change made after
    ``await nursery.start(watch_file, ...)`` is never missed.
    """
    path = Path(os.path.abspath(path))
    send, receive = trio.open_memory_channel[None](1)
    observer = Observer()
    observer.schedule(_Handler(str(path), trio.lowlevel.current_trio_token(), send),
                      str(path.parent), recursive=False)
    observer.daemon = True
    observer.start()
    try:
        task_status.started()
        async with receive:
            async for _ in receive:
                while True:  # debounce: wait until no poke came for DEBOUNCE seconds
                    with trio.move_on_after(DEBOUNCE) as quiet:
                        await receive.receive()
                    if quiet.cancelled_caught:
                        break
                await on_change.send(None)
    finally:
        observer.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(observer.join)
