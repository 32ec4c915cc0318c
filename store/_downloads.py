"""Download records: ``downloads/<ref>.json``, one per canonical URL whose file was stored.

A version records its files only once the whole model is verified and published.
Until then, without these records, a file that finished downloading is known only as
an anonymous object: a sync interrupted half-way (SIGKILL, SIGTERM, a power cut, one
bad shard) would fetch every finished file again on its next try (issue 9 measured
1.5x a model's bytes after a kill at 50 %). So each committed download leaves a
record: the URL, the validators its bytes came with, the digest and size, and the
``source`` (the manifest URL of the model that wanted it). The next sync knows the
file and asks the origin conditionally: a 304 costs no body.

A record is a hint, never trusted for bytes: the object it names is used only if the
store holds it, and its bytes were verified by digest when they were committed. So
a record lost or damaged by a power cut only costs that file's download again.
It is written after the object is durable, and durably itself (fsync, rename, fsync
the directory): the two extra fsyncs per file cost little beside the data's own
(docs/performance.md).

Records are dropped when the files are part of a recorded version (the version's
snapshot holds the same knowledge) and when their source leaves the configuration;
gc keeps the objects records name meanwhile.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

from ._atomic import read_at, unlink_durably, write_atomic
from ._errors import UnsafePathError
from ._objects import check_digest

__all__ = ["Download", "Downloads"]


@dataclass(frozen=True)
class Download:
    """One file downloaded and stored, not yet part of a recorded version."""

    url: str
    digest: str
    size: int
    etag: str | None
    last_modified: str | None
    source: str | None  # the manifest URL of the model that wanted it
    time: float

    @classmethod
    def from_json(cls, raw: bytes) -> Download | None:
        """The record in ``raw``; None if it is damaged (a power cut, a stray file)."""
        try:
            d = json.loads(raw)
            return cls(url=str(d["url"]), digest=check_digest(d["digest"]),
                       size=int(d["size"]), etag=_opt_str(d.get("etag")),
                       last_modified=_opt_str(d.get("last_modified")),
                       source=_opt_str(d.get("source")), time=float(d.get("time", 0)))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _opt_str(v: object) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError("not a string")
    return v


class Downloads:
    """The records in ``downloads/`` (``dir_fd``), named by ingest ref (a URL hash)."""

    def __init__(self, dir_fd: int) -> None:
        self._fd = dir_fd

    def add(self, ref: str, url: str, digest: str, size: int, *, etag: str | None,
            last_modified: str | None, source: str | None) -> None:
        """Record (durably) that ``url`` is stored as ``digest``; replaces an older one."""
        record = Download(url, digest, size, etag, last_modified, source, time.time())
        write_atomic(self._fd, ref + ".json", json.dumps(asdict(record)).encode(),
                     mode=0o600)

    def all(self) -> list[Download]:
        """Every readable record (damaged ones are skipped; :meth:`prune` removes them)."""
        return [d for _, d in self._scan() if d is not None]

    def forget(self, refs: Iterable[str]) -> None:
        """Drop the records of these refs (missing is fine)."""
        names = [r + ".json" for r in refs]
        present = set(os.listdir(self._fd))
        gone = [n for n in names if n in present]
        if gone:
            unlink_durably(self._fd, *gone)

    def prune(self, sources: Collection[str]) -> int:
        """Drop records whose source is not in ``sources``, and damaged ones; how many."""
        gone = [name for name, d in self._scan() if d is None or d.source not in sources]
        if gone:
            unlink_durably(self._fd, *gone)
        return len(gone)

    def _scan(self) -> list[tuple[str, Download | None]]:
        out: list[tuple[str, Download | None]] = []
        for name in sorted(os.listdir(self._fd)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                raw = read_at(self._fd, name)
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, UnsafePathError):
                raw = b""  # a planted symlink (read_at refuses it) or unreadable: damaged
            out.append((name, Download.from_json(raw)))
        return out
