"""The exception tree of shardsync.

Every error shardsync raises on purpose is a :class:`ShardsyncError`. Each one
carries what an operator needs to act on it as attributes (``model``, ``file``,
``expected``, ``actual``) and says them in its message, so a log line alone
names the model, the file and the reason. Only the CLI turns errors into exit
statuses.

    ShardsyncError
    ├── IntegrityError     bytes are not what they must be (digest, size)
    ├── NotFoundError      a model, version, object or file that does not exist
    ├── UnsafePathError    a path that could escape state_dir or site_dir
    ├── LockedError        someone else holds it (an ingest, the store for gc)
    └── StorageError       the filesystem failed us (disk full, EIO); from OSError

The daemon adds its own (config, manifest, upstream HTTP, timeout) in
``shardsync.daemon.errors``; they subclass :class:`ShardsyncError` too.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Any

__all__ = [
    "IntegrityError",
    "LockedError",
    "NotFoundError",
    "ShardsyncError",
    "StorageError",
    "UnsafePathError",
    "translate_oserror",
]


class ShardsyncError(Exception):
    """Base of every shardsync error.

    ``reason`` says what went wrong in words; the keyword attributes say where.
    ``str(err)`` reads ``model M: file F: reason (expected E, got A)``, leaving out
    what is unknown.
    """

    def __init__(
        self,
        reason: str,
        *,
        model: str | None = None,
        file: str | None = None,
        expected: Any = None,
        actual: Any = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.model = model
        self.file = file
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        parts = []
        if self.model is not None:
            parts.append(f"model {self.model}")
        if self.file is not None:
            parts.append(f"file {self.file}")
        msg = ": ".join([*parts, self.reason])
        if self.expected is not None or self.actual is not None:
            msg += f" (expected {self.expected}, got {self.actual})"
        return msg

    def with_context(self, *, model: str | None = None, file: str | None = None) -> ShardsyncError:
        """Fill in ``model``/``file`` where still unknown; returns self for ``raise``."""
        if self.model is None:
            self.model = model
        if self.file is None:
            self.file = file
        return self


class IntegrityError(ShardsyncError):
    """Bytes are not what the manifest, the store or the caller said they must be."""


class NotFoundError(ShardsyncError):
    """A model, version, object or file that does not exist."""


class UnsafePathError(ShardsyncError):
    """A path that is absolute, climbs with ``..``, or would follow a symlink outward."""


class LockedError(ShardsyncError):
    """Another writer holds the ingest (or another process the store, for gc)."""


class StorageError(ShardsyncError):
    """The filesystem failed (disk full, I/O error, permissions); the OSError is ``__cause__``."""

    @classmethod
    def from_oserror(cls, exc: OSError, what: str, **where: Any) -> StorageError:
        """``what: strerror``; for ENAMETOOLONG also the name that is too long, which
        ``where`` (a model, a URL) rarely is, and without which "File name too long"
        names nothing."""
        from ._paths import SEGMENT_MAX  # here: _paths imports this module

        reason = f"{what}: {exc.strerror or exc}"
        if exc.errno == errno.ENAMETOOLONG and isinstance(exc.filename, str | bytes):
            name = os.fsdecode(exc.filename)
            long = [p for p in name.split("/") if len(os.fsencode(p)) > SEGMENT_MAX]
            if long:
                reason += (f": {_shorten(long[0])!r} is {len(os.fsencode(long[0]))} bytes, "
                           f"longer than the {SEGMENT_MAX} a file name may have")
            else:
                reason += f": {_shorten(name)!r}"
        return cls(reason, **where)


def _shorten(name: str) -> str:
    """``name`` as a message can show it: a 300-byte name is cut in the middle."""
    return name if len(name) <= 80 else f"{name[:40]}...{name[-20:]}"


@contextlib.contextmanager
def translate_oserror(what: str, **where: Any) -> Iterator[None]:
    """Turn an OSError raised inside into a StorageError saying ``what`` failed and where.

    The store's public methods use it, so that a full disk or an I/O error reaches
    the caller as a ShardsyncError naming the model or file, never as a bare OSError.
    A ShardsyncError raised inside passes through, given the ``model`` if it had none
    (a planted symlink found by a helper that knows only the file).
    """
    try:
        yield
    except ShardsyncError as exc:
        if "model" in where:
            exc.with_context(model=where["model"])
        raise
    except OSError as exc:
        raise StorageError.from_oserror(exc, what, **where) from exc
