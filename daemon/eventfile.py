"""The event log's file: what one line holds, and how a file is read back on open.

One :class:`Event` per line of ``events.jsonl`` (:meth:`Event.to_json` /
:meth:`Event.from_json`); :func:`parse_lines` reads the whole, valid lines back and
says where the last one ends (a torn tail is the caller's to cut off);
:func:`lock_exclusive` keeps a second process out; :func:`read_hwm` reads the id
reservation of ``events.jsonl.hwm``. Kept apart from :mod:`.events`, which holds the
open log (ids, appends, cursors, rotation), because this is the file format and its
recovery, read once per open. See :mod:`.events` for why the file is as it is.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardsync.store import LockedError, StorageError

__all__ = ["RESERVED_KEYS", "Event", "lock_exclusive", "parse_lines", "read_all", "read_hwm"]

# The event log's logger, as before this module was split from it.
log = logging.getLogger(f"{__package__}.events")

#: Keys every event has; extra fields may not reuse them.
RESERVED_KEYS = frozenset({"id", "time", "type", "model"})


@dataclass(frozen=True)
class Event:
    """One event. ``fields`` holds everything besides the four fixed keys."""

    id: int
    time: float
    type: str
    model: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as the log and the control socket spell it (one flat object)."""
        return {"id": self.id, "time": self.time, "type": self.type, "model": self.model,
                **self.fields}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        """Inverse of :meth:`to_json`; ``ValueError`` if ``id``/``time``/``type`` are not valid."""
        ev_id, ev_time, ev_type = obj.get("id"), obj.get("time"), obj.get("type")
        if not isinstance(ev_id, int) or isinstance(ev_id, bool) or ev_id < 1:
            raise ValueError(f"bad event id {ev_id!r}")
        if not isinstance(ev_time, int | float) or not isinstance(ev_type, str):
            raise ValueError(f"event {ev_id} lacks a time or a type")
        model = obj.get("model")
        extra = {k: v for k, v in obj.items() if k not in RESERVED_KEYS}
        return cls(ev_id, float(ev_time), ev_type, model if isinstance(model, str) else None,
                   extra)


def read_hwm(path: str) -> tuple[int, str]:
    """The reserved id high-water mark and the boot it was written in; (0, "") if none."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            hwm, _, boot = f.read().decode().strip().partition(" ")
        return max(0, int(hwm or 0)), boot
    except (OSError, ValueError):
        return 0, ""


def lock_exclusive(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise LockedError("the event log is open in another process (is shardsync already "
                          "running with this state_dir?)", file=path) from exc


def read_all(fd: int, path: str) -> bytes:
    chunks = []
    offset = 0
    try:
        while chunk := os.pread(fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot read the event log", file=path) from exc
    return b"".join(chunks)


def parse_lines(data: bytes, path: str) -> tuple[list[int], list[bytes], int]:
    """Whole, valid lines with increasing ids, and the offset just after the last of them."""
    ids: list[int] = []
    lines: list[bytes] = []
    good_end = 0
    pos = 0
    skipped = 0
    while (nl := data.find(b"\n", pos)) != -1:
        line = data[pos:nl]
        pos = nl + 1
        try:
            event = Event.from_json(json.loads(line))
            if ids and event.id <= ids[-1]:
                raise ValueError(f"id {event.id} does not increase")
        except (ValueError, AttributeError, TypeError):
            skipped += 1
            continue
        ids.append(event.id)
        lines.append(line)
        good_end = pos
    # Bad lines before good_end stay in the file (until the next rotation) but are not served.
    bad_inside = skipped - data[good_end:].count(b"\n")
    if bad_inside:
        log.warning("event log %s: skipped %d unreadable lines", path, bad_inside)
    return ids, lines, good_end
