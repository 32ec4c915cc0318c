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

from ._records import ModelRecords

__all__ = ["DIR", "TrustRecords"]

DIR = "trust"


class TrustRecords(ModelRecords):
    """The records below one ``trust/`` directory fd (opaque JSON objects to the store)."""

    def __init__(self, trust_fd: int) -> None:
        super().__init__(trust_fd, DIR, damaged=(
            "trust record is damaged; remove it to accept the model's signatures afresh "
            "(its rollback protection goes with it)"))
