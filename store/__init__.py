"""shardsync.store: the content-addressed store and atomic publishing.

A synchronous library: no network, no trio. The daemon (and the CLI) hold one
:class:`Store`; everything else here is what it is built from. This package's
``__all__`` is its whole surface: nothing outside it imports the modules inside.
"""

from __future__ import annotations

from ._atomic import TMP_PREFIX, write_all, write_atomic
from ._downloads import Download
from ._errors import (
    IntegrityError,
    LockedError,
    NotFoundError,
    ShardsyncError,
    StorageError,
    UnsafePathError,
)
from ._gc import GcReport, StoreStats
from ._ingest import Ingest, IngestStatus, boot_id
from ._objects import ObjectInfo
from ._paths import VERSIONS_DIR, check_manifest_name, check_name, check_relpath
from ._pins import Pin
from ._store import GRACE_SECONDS, EntryPoint, Store
from ._verify import Problem
from ._versions import VERSION_ID_LEN, FileEntry, Version

__all__ = [
    "Download",
    "EntryPoint",
    "GRACE_SECONDS",
    "TMP_PREFIX",
    "VERSIONS_DIR",
    "VERSION_ID_LEN",
    "FileEntry",
    "GcReport",
    "Ingest",
    "IngestStatus",
    "IntegrityError",
    "LockedError",
    "NotFoundError",
    "ObjectInfo",
    "Pin",
    "Problem",
    "ShardsyncError",
    "StorageError",
    "Store",
    "StoreStats",
    "UnsafePathError",
    "Version",
    "boot_id",
    "check_manifest_name",
    "check_name",
    "check_relpath",
    "write_all",
    "write_atomic",
]
