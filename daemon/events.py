"""The event log behind ``GET /v1/events?since=N``: an append-only JSON-lines file.

Operators and dashboards follow what the service does (a check started, a version
was published, a sync failed) by long-polling the control socket with a cursor.
For that to be reliable the cursor must mean the same thing after a restart and no
event may fall between two polls, so events live in ``state_dir/events.jsonl``,
one JSON object per line::

    {"id": 41, "time": 1718000000.123, "type": "published", "model": "bodypix", "version": "3f2a"}

Ids are assigned here, strictly increasing, and continue from the file's last id
when the service starts again. A cursor ``N`` asks for every event with an id
greater than ``N``; ``0`` means from the beginning.

Durability. Each event is written with one ``write(2)`` on an ``O_APPEND``
descriptor, so it reaches the kernel at once and survives a crash of the process;
it is not fsynced. Events are a report of what happened, not the record of the
store (snapshots and refs are, and they are fsynced), and an fsync per event would
stall the event loop for a disk flush and wear a kiosk's flash for nothing. A
power loss can therefore lose the last seconds of events (the kernel writes them
back within about 30 s). Their ids are never handed out again: ids are reserved in
blocks of :data:`ID_BLOCK` in ``events.jsonl.hwm`` (fsynced, once per block, with
the kernel's boot id), and a log reopened after a reboot goes on after the reserved
block, so a cursor never skips a new event that reused a lost one's id. Within one
boot nothing written can be lost, and ids go on from the file's last. A crash
mid-write leaves a torn last line: it is dropped, and the file truncated back to the
last whole event, on the next open.

Size. When the file grows past ``max_bytes`` it is rewritten to keep only its
newest half (written to a temporary file, fsynced, renamed over). Ids never
change; a cursor older than the oldest kept event gets everything kept and
``truncated: true``, which the caller can surface ("some events were dropped"). A
cursor past the newest event waits, like one at the end, for the next event.

One process at a time: the file is locked (``flock``) while open; a second opener
gets :class:`~shardsync.store.LockedError`. An :class:`EventLog` is not
thread-safe: use it from the trio thread (or from a program without trio).

What one line holds (:class:`Event`) and how a file is read back (locked, read,
parsed, its reservation read) live in :mod:`.eventfile`; this module is the log
that is open: ids, appends, cursors, rotation.
"""

from __future__ import annotations

import bisect
import errno
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import trio

from shardsync.store import StorageError, boot_id, write_all, write_atomic

from .eventfile import RESERVED_KEYS, Event, lock_exclusive, parse_lines, read_all, read_hwm

__all__ = ["DEFAULT_LIMIT", "DEFAULT_MAX_BYTES", "Event", "EventBatch", "EventLog"]

log = logging.getLogger(__name__)

# About 20k events of ~200 bytes: weeks of a busy kiosk's history, small enough to keep in memory.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# Events per answer: bounds one response; a client that is behind just polls again at once.
DEFAULT_LIMIT = 1000
#: Ids reserved per fsync of the high-water mark: one small fsync per thousand events
#: (a busy service writes a few per model per check), and a restart skips at most that.
ID_BLOCK = 1000

# Group-readable: the control socket's group may read the history; nobody else.
_FILE_MODE = 0o640


@dataclass(frozen=True)
class EventBatch:
    """An answer to ``since``: the events, the cursor to ask with next, and whether some are gone.

    ``truncated`` is true when events the cursor asked for are no longer kept
    (rotated away, or the log was reset after a power loss or by hand); ``events``
    then starts at the oldest event kept.
    """

    events: list[Event]
    cursor: int
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """``{"events": [...], "next": cursor, "truncated": bool}``, the body of ``/v1/events``."""
        return {"events": [e.to_json() for e in self.events], "next": self.cursor,
                "truncated": self.truncated}


class EventLog:
    """The open event log. Build it with :meth:`open`; close it with :meth:`close`."""

    def __init__(self, path: str, fd: int, ids: list[int], lines: list[bytes], size: int,
                 max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = fd
        self._ids = ids  # ids of the kept events, ascending
        self._lines = lines  # their JSON lines, without the newline
        self._size = size  # bytes in the file: sum of len(line) + 1
        self._hwm_path = path + ".hwm"
        self._hwm, hwm_boot = read_hwm(self._hwm_path)
        last = ids[-1] if ids else 0
        # After a reboot, events up to the reservation may have been lost with their ids.
        self._last_id = last if hwm_boot == boot_id() else max(last, self._hwm)
        self._changed = trio.Event()  # set (and replaced) on every append and on close

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> EventLog:
        """Open (creating if needed) the log at ``path`` and lock it for this process.

        Reads the last id so ids go on where they stopped. Lines after the last valid
        event (a torn write from a crash) are dropped and the file truncated to it;
        invalid lines in the middle are skipped with a warning. If the file is already
        over ``max_bytes`` it is rotated at once.

        Raises :class:`LockedError` if another process has it open, and
        :class:`StorageError` if it cannot be read or created.
        """
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                         _FILE_MODE)  # a symlink planted here is refused, never followed
        except OSError as exc:
            raise StorageError.from_oserror(exc, "cannot open the event log", file=path) from exc
        try:
            lock_exclusive(fd, path)
            data = read_all(fd, path)
            ids, lines, good_end = parse_lines(data, path)
            if good_end < len(data):
                log.warning("event log %s: dropping %d bytes after the last whole event "
                            "(a write torn by a crash)", path, len(data) - good_end)
                try:
                    os.ftruncate(fd, good_end)
                    os.fsync(fd)
                except OSError as exc:
                    raise StorageError.from_oserror(
                        exc, "cannot truncate the event log's torn tail", file=path) from exc
        except BaseException:
            os.close(fd)
            raise
        self = cls(path, fd, ids, lines, good_end, max_bytes)
        if self._size > max_bytes:
            try:
                self._rotate()
            except OSError as exc:
                log.warning("event log %s: rotation failed, will retry: %s", path, exc)
        return self

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 if there never was one)."""
        return self._last_id

    @property
    def first_id(self) -> int | None:
        """The id of the oldest event kept, or None if none is."""
        return self._ids[0] if self._ids else None

    def append(self, type: str, /, *, model: str | None = None, **fields: Any) -> Event:
        """Write one event and wake every :meth:`wait_since` waiting for it.

        ``fields`` must be JSON-serializable and may not be named ``id``, ``time``,
        ``type`` or ``model`` (``ValueError``/``TypeError``, nothing written). A
        failed write raises :class:`StorageError` and leaves the file as it was
        (the partial line is cut off again); the id is not used up.
        """
        if self._fd is None:
            raise ValueError(f"event log {self.path} is closed")
        clash = RESERVED_KEYS.intersection(fields)
        if clash:
            raise ValueError(f"event fields may not be named {sorted(clash)}")
        event = Event(self._last_id + 1, round(time.time(), 3), type, model, fields)
        if event.id > self._hwm:
            self._reserve(event.id + ID_BLOCK)
        line = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()
        self._write_line(line)
        self._ids.append(event.id)
        self._lines.append(line)
        self._size += len(line) + 1
        self._last_id = event.id
        self._wake()
        if self._size > self.max_bytes:
            try:
                self._rotate()
            except OSError as exc:
                # The event is written; a failed rotation only delays trimming to the next append.
                log.warning("event log %s: rotation failed, will retry: %s", self.path, exc)
        return event

    def since(self, cursor: int, limit: int = DEFAULT_LIMIT) -> EventBatch:
        """At most ``limit`` events with ids greater than ``cursor``, oldest first.

        If the cursor is older than the oldest kept event, the batch holds the oldest
        kept events and ``truncated`` is true. A cursor past the newest event means
        "from now on" (:meth:`_clamp`): no events, and the newest id as the cursor.
        ``batch.cursor`` is what to ask with next.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        cursor = self._clamp(cursor)
        first = self._ids[0] if self._ids else self._last_id + 1
        truncated = cursor < first - 1
        start = 0 if truncated else bisect.bisect_right(self._ids, cursor)
        events = [Event.from_json(json.loads(line)) for line in self._lines[start:start + limit]]
        return EventBatch(events, events[-1].id if events else cursor, truncated)

    def _clamp(self, cursor: int) -> int:
        """``cursor``, or the newest id if it is past it.

        A client may ask from a cursor no event has reached yet: one from a log that
        was reset (removed by hand, or lost with its reservation), or a large number
        meaning "only new ones". Either way there is nothing to send it now, and
        sending the whole log (as "truncated") would flood a follower with events it
        either has or never asked for; so it waits for the next event (the long-poll)
        and goes on from the newest id, missing nothing appended after its request.
        """
        if cursor < 0:
            raise ValueError(f"cursor must be >= 0, got {cursor}")
        return min(cursor, self._last_id)

    async def wait_since(self, cursor: int, timeout: float,
                         limit: int = DEFAULT_LIMIT) -> EventBatch:
        """Like :meth:`since`, but if there is nothing to return, wait for an append.

        Returns at once when events exist (or ``truncated`` is set); otherwise wakes
        on the next :meth:`append` (or :meth:`close`) or after ``timeout`` seconds,
        whichever comes first, and returns what there is then (possibly nothing).
        Cancelling it leaves nothing behind.
        """
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        cursor = self._clamp(cursor)  # past the end: wait for what comes after it now
        batch = self.since(cursor, limit)
        if batch.events or batch.truncated or self._fd is None:
            return batch
        changed = self._changed
        with trio.move_on_after(timeout):
            await changed.wait()
        return self.since(cursor, limit)

    def close(self) -> None:
        """Release the file and its lock, and wake the waiters. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._wake()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _reserve(self, hwm: int) -> None:
        """Durably record that ids up to ``hwm`` may be handed out (see the module doc)."""
        parent = os.path.dirname(self._hwm_path) or "."
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            write_atomic(dir_fd, os.path.basename(self._hwm_path),
                         f"{hwm} {boot_id()}\n".encode(), mode=_FILE_MODE)
        except OSError as exc:
            raise StorageError.from_oserror(exc, "cannot reserve event ids",
                                            file=self._hwm_path) from exc
        finally:
            os.close(dir_fd)
        self._hwm = hwm

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _write_line(self, line: bytes) -> None:
        assert self._fd is not None
        data = line + b"\n"
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write (disk full?)")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)  # no torn line in the middle of the log
            except OSError:
                log.exception("event log %s: cannot cut off a partial line", self.path)
            raise StorageError.from_oserror(exc, "cannot append to the event log",
                                            file=self.path) from exc

    def _rotate(self) -> None:
        """Keep the newest lines (about half of max_bytes, at least one) via a temp file + rename.

        A crash at any point leaves either the old file or the new one under ``path``.
        """
        assert self._fd is not None
        keep_bytes = self.max_bytes // 2
        start, kept = len(self._lines), 0
        while start > 0 and (start == len(self._lines)
                             or kept + len(self._lines[start - 1]) + 1 <= keep_bytes):
            start -= 1
            kept += len(self._lines[start]) + 1
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC,
                     _FILE_MODE)
        try:
            # Locked before it takes the log's name, so no other process can slip in.
            lock_exclusive(fd, tmp)
            data = b"".join(line + b"\n" for line in self._lines[start:])
            write_all(fd, data)
            os.fsync(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        old, self._fd = self._fd, fd
        os.close(old)
        dropped = start
        del self._ids[:start], self._lines[:start]
        self._size = kept
        try:
            dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            # The rename is done and the data synced; only its durability across power loss waits.
            log.warning("event log %s: cannot fsync its directory: %s", self.path, exc)
        log.info("event log %s rotated: dropped %d old events, kept %d from id %d",
                 self.path, dropped, len(self._ids), self._ids[0])
