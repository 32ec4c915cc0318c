"""Per-model JSON records: ``<dir>/<name>.json``, one small object per model, kept durably.

Pins (:mod:`._pins`) and trust records (:mod:`._trust`) are the same kind of file: a
decision about one model that must outlive the process and a power cut, so written
atomically (temp, fsync, rename, fsync the directory), and never read through a
symlink. A record that cannot be read as a JSON object is an IntegrityError naming
the model and the file, not "no record": each of these records protects against
something (a rollback, an update over a pin) that forgetting it would let through.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from ._atomic import read_at, unlink_durably, write_atomic
from ._errors import IntegrityError
from ._paths import check_name

__all__ = ["ModelRecords"]


class ModelRecords:
    """The records below one directory fd, ``dirname`` (for messages) in state_dir."""

    def __init__(self, dir_fd: int, dirname: str, *, damaged: str) -> None:
        self._fd = dir_fd
        self._dirname = dirname
        self._damaged = damaged  # the reason given for a damaged record: what to do

    def get(self, name: str) -> dict[str, Any] | None:
        """The record of model ``name``, or None if there is none."""
        file = f"{check_name(name)}.json"
        try:
            raw = read_at(self._fd, file, where=f"{self._dirname}/{file}")
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise self.damaged(name)
        return doc

    def damaged(self, name: str) -> IntegrityError:
        """The error for the damaged record of ``name`` (also for a well-formed JSON
        object its owner cannot use)."""
        return IntegrityError(self._damaged, model=name,
                              file=f"{self._dirname}/{check_name(name)}.json")

    def set(self, name: str, record: Mapping[str, Any]) -> None:
        """Replace the record of model ``name`` durably."""
        data = json.dumps(dict(record), sort_keys=True).encode() + b"\n"
        write_atomic(self._fd, f"{check_name(name)}.json", data)

    def drop(self, name: str) -> None:
        """Remove the record of model ``name`` durably (none is fine)."""
        with contextlib.suppress(FileNotFoundError):
            unlink_durably(self._fd, f"{check_name(name)}.json")
