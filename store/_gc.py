"""gc and stats: what the version records reference, against the objects stored.

:meth:`Store.gc <._store.Store.gc>` runs :func:`collect` (remove objects no record
references, and orphaned partial files) holding the store exclusively, so that no
publish or ingest runs meanwhile; :meth:`Store.stats <._store.Store.stats>` runs
:func:`count`. Both translate OSError there.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from ._downloads import Downloads
from ._ingest import remove_orphans
from ._objects import Objects
from ._versions import Versions

__all__ = ["GcReport", "StoreStats", "collect", "count"]


@dataclass
class GcReport:
    """What gc removed (or, in a dry run, would remove)."""

    objects_removed: int = 0
    bytes_freed: int = 0
    objects_kept: int = 0
    partials_removed: int = 0
    removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StoreStats:
    """Sizes of the store: what is stored, and what dedupe saved."""

    objects: int  # objects stored
    bytes: int  # bytes of all objects stored
    saved: int  # bytes the recorded versions reference beyond the objects stored


def count(objects: Objects, versions: Versions) -> StoreStats:
    """Count the objects and their bytes, and what the records reference beyond them."""
    sizes = {o.digest: o.size for o in objects.walk()}
    referenced = 0
    unique: set[str] = set()
    for v in versions.all():
        for e in (v.manifest, *v.files):
            referenced += e.size
            unique.add(e.digest)
    return StoreStats(objects=len(sizes), bytes=sum(sizes.values()),
                      saved=max(0, referenced - sum(sizes.get(d, 0) for d in unique)))


def collect(objects: Objects, versions: Versions, downloads: Downloads, partial_fd: int, *,
            dry_run: bool, min_age: float, sources: Collection[str] | None) -> GcReport:
    """Mark every object a version record or a download record references, sweep the
    rest (but those younger than ``min_age`` seconds), then the partial files missing
    their other half. With ``sources``, download records of other sources are dropped
    first (and, in a dry run, not counted)."""
    report = GcReport()
    young_since = time.time() - min_age
    referenced: set[str] = set()
    for version in versions.all():
        referenced |= version.digests
    if sources is not None and not dry_run:
        downloads.prune(sources)
    referenced |= {d.digest for d in downloads.all()
                   if sources is None or d.source in sources}
    for info in list(objects.walk()):
        if info.digest in referenced or (min_age and info.mtime > young_since):
            report.objects_kept += 1
            continue
        report.objects_removed += 1
        report.bytes_freed += info.size
        report.removed.append(info.digest)
        if not dry_run:
            objects.delete(info.digest)
    report.partials_removed = remove_orphans(partial_fd, dry_run=dry_run)
    return report
