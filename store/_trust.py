"""Trust records: ``trust/<name>.json``, what the daemon last accepted about a model's signature.

A signed model's signature carries a ``version`` that must never go down (a rollback
to an old, perhaps vulnerable, model signed long ago). That needs a memory that
outlives the process: a restart or a reboot must not forget the highest version
accepted. The record is an opaque JSON object to the store (the daemon decides what
it holds: the signature's version, key id, expiry; docs/design.md, "Signed
models"); the store only keeps it durably and hands it back.

Written atomically (temp, fsync, rename, fsync the directory), so a crash leaves the
old record or the new one, never a torn one. A record that cannot be read as a JSON
object is an IntegrityError, not "no record": forgetting it would silently let a
rollback through, so the model's syncs fail until an operator removes the file.
Records stay when a model leaves the config: the rollback protection must not be
lost by a config edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._atomic import read_at, write_atomic
from ._errors import IntegrityError
from ._paths import check_name

__all__ = ["TrustRecords"]

DIR = "trust"


class TrustRecords:
    """The records below one ``trust/`` directory fd."""

    def __init__(self, trust_fd: int) -> None:
        self._fd = trust_fd

    def get(self, name: str) -> dict[str, Any] | None:
        """The record of model ``name``, or None if there is none."""
        file = f"{check_name(name)}.json"
        try:
            raw = read_at(self._fd, file, where=f"{DIR}/{file}")
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise IntegrityError("trust record is damaged; remove it to accept the model's "
                                 "signatures afresh (its rollback protection goes with it)",
                                 model=name, file=f"{DIR}/{file}")
        return doc

    def set(self, name: str, record: Mapping[str, Any]) -> None:
        """Replace the record of model ``name`` durably."""
        data = json.dumps(dict(record), sort_keys=True).encode() + b"\n"
        write_atomic(self._fd, f"{check_name(name)}.json", data)
