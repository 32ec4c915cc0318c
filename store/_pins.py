"""Pins: ``pins/<name>.json``, the version an operator holds a model at, and what waits.

A pinned model keeps its pinned version current: syncs still check the origin, but
what they find is recorded and held back (``waiting``), never published, until the
pin is removed. The pin has to outlive the process and a power cut (a kiosk rolled
back to a good model must not flip to the bad one at the next boot), so it is a file
of its own, written atomically (temp, fsync, rename, fsync the directory): a crash
leaves the old pin or the new one. The waiting version lives in the same record
because it is the same decision: keeping it on disk (its record and objects kept by
:meth:`Store.kept`) lets an unpin publish it without the network.

A record that cannot be read as a pin is an IntegrityError, not "no pin": treating it
as absent would let the next sync publish over the operator's rollback.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from ._atomic import read_at, unlink_durably, write_atomic
from ._errors import IntegrityError
from ._paths import check_name

__all__ = ["Pin", "Pins"]

DIR = "pins"


@dataclass(frozen=True)
class Pin:
    """A model held at ``version`` since ``since`` (Unix seconds); ``waiting`` is the
    version the origin offered at the last check, held back (None: nothing newer)."""

    version: str
    since: float
    waiting: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "since": self.since, "waiting": self.waiting}


class Pins:
    """The pins below one ``pins/`` directory fd."""

    def __init__(self, pins_fd: int) -> None:
        self._fd = pins_fd

    def get(self, name: str) -> Pin | None:
        """The pin of model ``name``, or None if it is not pinned."""
        file = f"{check_name(name)}.json"
        try:
            raw = read_at(self._fd, file, where=f"{DIR}/{file}")
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            waiting = doc.get("waiting")
            pin = Pin(str(doc["version"]), float(doc["since"]),
                      None if waiting is None else str(waiting))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError("pin is damaged; `shardsync unpin` removes it, "
                                 "`shardsync pin` writes it again",
                                 model=name, file=f"{DIR}/{file}") from None
        return pin

    def set(self, name: str, pin: Pin) -> None:
        """Replace the pin of model ``name`` durably."""
        data = json.dumps(pin.to_json(), sort_keys=True).encode() + b"\n"
        write_atomic(self._fd, f"{check_name(name)}.json", data)

    def drop(self, name: str) -> None:
        """Remove the pin of model ``name`` durably (no pin is fine)."""
        with contextlib.suppress(FileNotFoundError):
            unlink_durably(self._fd, f"{check_name(name)}.json")
