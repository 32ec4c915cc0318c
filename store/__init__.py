"""shardsync.store: the content-addressed store and atomic publishing.

A synchronous library: no network, no trio. The daemon (and the CLI) hold one
:class:`Store`; everything else here is what it is built from.
"""

from __future__ import annotations

from .errors import (
    IntegrityError,
    LockedError,
    NotFoundError,
    ShardsyncError,
    StorageError,
    UnsafePathError,
)
from .ingest import Ingest, IngestStatus
from .objects import ObjectInfo
from .store import GRACE_SECONDS, GcReport, Problem, Store
from .versions import FileEntry, Version

__all__ = [
    "GRACE_SECONDS",
    "FileEntry",
    "GcReport",
    "Ingest",
    "IngestStatus",
    "IntegrityError",
    "LockedError",
    "NotFoundError",
    "ObjectInfo",
    "Problem",
    "ShardsyncError",
    "StorageError",
    "Store",
    "UnsafePathError",
    "Version",
]
