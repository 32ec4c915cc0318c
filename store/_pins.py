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

from dataclasses import dataclass
from typing import Any

from ._records import ModelRecords

__all__ = ["DIR", "Pin", "Pins"]

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
        self._records = ModelRecords(pins_fd, DIR, damaged=(
            "pin is damaged; `shardsync unpin` removes it, `shardsync pin` writes it again"))

    def get(self, name: str) -> Pin | None:
        """The pin of model ``name``, or None if it is not pinned."""
        doc = self._records.get(name)
        if doc is None:
            return None
        try:
            waiting = doc.get("waiting")
            return Pin(str(doc["version"]), float(doc["since"]),
                       None if waiting is None else str(waiting))
        except (ValueError, KeyError, TypeError):
            raise self._records.damaged(name) from None

    def set(self, name: str, pin: Pin) -> None:
        """Replace the pin of model ``name`` durably."""
        self._records.set(name, pin.to_json())

    def drop(self, name: str) -> None:
        """Remove the pin of model ``name`` durably (no pin is fine)."""
        self._records.drop(name)
