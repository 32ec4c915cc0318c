"""Partial downloads that survive a crash: ``partial/<ref>.data`` + ``partial/<ref>.json``.

An ingest is invisible until :meth:`Ingest.commit` turns it into an object; closing
it without commit keeps the bytes for a later resume (containerd's ingest model).

The sidecar (``.json``) records the canonical URL, the validators the bytes came
with (ETag / Last-Modified), the expected length, and ``durable``: how many bytes
of ``.data`` are known to be on disk. It is rewritten (atomically) only after an
``fdatasync`` of the data, so it never claims bytes the file does not durably hold.

On reopen, how much of ``.data`` to trust depends on what happened:

* the same boot (``boot_id`` unchanged): the process died but the kernel did not,
  so everything ``write(2)`` accepted is in the page cache, in order: the whole
  file is a correct prefix of the stream, even past ``durable``;
* another boot (a power cut or reboot): only ``durable`` bytes are trusted; the
  file is truncated to it.

Either way the kept prefix is re-hashed once on reopen (hashlib state cannot be
saved), and the final digest check at commit catches anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._atomic import unlink_durably, write_all, write_atomic
from ._errors import IntegrityError, LockedError, translate_oserror
from ._objects import CHUNK

if TYPE_CHECKING:
    from ._downloads import Downloads
    from ._objects import Objects

__all__ = ["CHECKPOINT_BYTES", "Ingest", "IngestStatus", "boot_id", "ingest_ref", "read_status",
           "remove_orphans", "statuses"]

#: Bytes written between two automatic checkpoints (fdatasync + sidecar). Bounds what a
#: power cut can cost per file to 16 MiB while keeping fsyncs rare (docs/performance.md: fsync per
#: small write is what makes pulls slow). A process crash loses nothing, see above.
CHECKPOINT_BYTES = 16 * 1024 * 1024

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id: unchanged while the kernel runs, new after any reboot or power cut."""
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:  # not Linux: treat every open as a new boot (only durable bytes count)
        return ""


def ingest_ref(url: str) -> str:
    """The ingest name of a canonical URL (a fixed-length, path-safe string)."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class IngestStatus:
    """What the sidecar of a partial download says."""

    ref: str
    url: str
    etag: str | None
    last_modified: str | None
    expected_size: int | None
    durable: int
    updated: float


class Ingest:
    """One partial download, locked for its writer until :meth:`close`/:meth:`commit`.

    Use :meth:`shardsync.store.Store.open_ingest` to get one. ``offset`` is how many
    bytes it holds (resume from there); ``etag``/``last_modified`` are the validators
    those bytes came with (send them as ``If-Range``).
    """

    def __init__(self, objects: Objects, partial_fd: int, url: str, *,
                 downloads: Downloads | None = None, source: str | None = None) -> None:
        self._objects = objects
        self._dir_fd = partial_fd
        self._downloads = downloads
        self.url = url
        self.source = source  # the manifest URL that wants this file (its download record)
        self.ref = ingest_ref(url)
        self._data_name = self.ref + ".data"
        self._meta_name = self.ref + ".json"
        self._fd = os.open(
            self._data_name,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=partial_fd,
        )
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LockedError("download already in progress by another writer", file=url) from None
        if os.fstat(self._fd).st_nlink > 1:
            # A crash inside commit, after the link into objects/: this name is a second
            # name of an object. Never write through it; drop the name and start afresh.
            self._discard_committed()
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.expected_size: int | None = None
        self._durable = 0
        self._since_checkpoint = 0
        self._hash = hashlib.sha256()
        self.offset = 0
        self._closed = False
        self._broken = False  # a write failed: offset and hash no longer match the file
        self._resume()

    # -- state -------------------------------------------------------------------

    def _discard_committed(self) -> None:
        unlink_durably(self._dir_fd, self._meta_name, self._data_name)
        old = self._fd
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self._data_name, flags, 0o600, dir_fd=self._dir_fd)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(old)

    def _resume(self) -> None:
        meta = self._read_meta()
        size = os.fstat(self._fd).st_size
        keep = durable = 0
        if meta is not None and meta.get("url") == self.url:
            self.etag = meta.get("etag")
            self.last_modified = meta.get("last_modified")
            self.expected_size = meta.get("expected_size")
            durable = min(int(meta.get("durable", 0)), size)
            same_boot = bool(boot_id()) and meta.get("boot_id") == boot_id()
            keep = size if same_boot else durable
        if keep != size:
            os.ftruncate(self._fd, keep)
        # Re-hash what we keep: the one re-read in the design, paid only on resume.
        os.lseek(self._fd, 0, os.SEEK_SET)
        left = keep
        while left:
            block = os.read(self._fd, min(CHUNK, left))
            if not block:
                raise IntegrityError("partial file shrank while reading", file=self.url)
            self._hash.update(block)
            left -= len(block)
        os.lseek(self._fd, keep, os.SEEK_SET)
        self.offset = keep
        self._durable = durable
        self._since_checkpoint = keep - durable

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            return _read_sidecar(self._dir_fd, self._meta_name)
        except FileNotFoundError:
            return None

    def _write_meta(self) -> None:
        meta = {
            "url": self.url,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "expected_size": self.expected_size,
            "durable": self._durable,
            "boot_id": boot_id(),
            "updated": time.time(),
        }
        # A sidecar claiming no durable bytes needs no fsync: lost or damaged by a power
        # cut, it only means starting that file over, which is what it claims anyway.
        write_atomic(self._dir_fd, self._meta_name, json.dumps(meta).encode(), mode=0o600,
                     durable=self._durable > 0)

    # -- writing -----------------------------------------------------------------

    def start(
        self,
        *,
        etag: str | None,
        last_modified: str | None,
        expected_size: int | None,
        offset: int = 0,
    ) -> None:
        """Begin (or begin again) at ``offset`` with these validators.

        ``offset`` must be 0 (a full 200 answer: bytes held are dropped) or the
        current :attr:`offset` (a 206 that continues where we are).
        """
        with translate_oserror("cannot write partial download", file=self.url):
            if offset not in (0, self.offset):
                raise IntegrityError(
                    "resume offset does not match the partial file",
                    file=self.url, expected=self.offset, actual=offset,
                )
            if offset == 0 and self.offset:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
                self._hash = hashlib.sha256()
                self.offset = 0
                self._durable = 0
            self.etag, self.last_modified, self.expected_size = etag, last_modified, expected_size
            self._write_meta()

    def write(self, data: bytes | memoryview, *, auto_checkpoint: bool = True) -> None:
        """Append ``data``, hashing it on the way.

        With ``auto_checkpoint`` it checkpoints every CHECKPOINT_BYTES itself; a caller
        that must not block on an fdatasync (an event loop) passes False and runs
        :meth:`checkpoint` elsewhere when :attr:`checkpoint_due` says so.
        """
        with translate_oserror("cannot write partial download", file=self.url):
            try:
                write_all(self._fd, data)
            except BaseException:
                # Some bytes may be in the file, not counted: claim nothing more. The file
                # is still a correct prefix of the stream; reopening re-reads its length.
                self._broken = True
                raise
            self._hash.update(data)
            n = len(data)
            self.offset += n
            self._since_checkpoint += n
            if auto_checkpoint and self.checkpoint_due:
                self.checkpoint()

    def tail(self, n: int) -> bytes:
        """The last ``n`` bytes held (fewer if it holds fewer).

        A resume asks the origin for these again and compares them before appending:
        a server whose 206 carries other bytes than it promised is caught here.
        """
        with translate_oserror("cannot read partial download", file=self.url):
            self._check_open()
            n = min(n, self.offset)
            return os.pread(self._fd, n, self.offset - n)

    @property
    def checkpoint_due(self) -> bool:
        """True once CHECKPOINT_BYTES were written since the last checkpoint."""
        return self._since_checkpoint >= CHECKPOINT_BYTES

    def checkpoint(self) -> None:
        """Make what is written durable, then let the sidecar claim it."""
        if self._broken:
            return
        with translate_oserror("cannot sync partial download", file=self.url):
            if self._durable == self.offset and not self._since_checkpoint:
                return
            os.fdatasync(self._fd)
            self._durable = self.offset
            self._since_checkpoint = 0
            self._write_meta()

    @property
    def closed(self) -> bool:
        """True once committed, aborted or closed (the lock is released)."""
        return self._closed

    @property
    def digest(self) -> str:
        """SHA-256 of the bytes held so far."""
        return self._hash.hexdigest()

    def commit(self, expected_size: int | None, expected_digest: str | None) -> str:
        """Turn the bytes into an object and remove the partial; return the digest.

        Between the two, the download is recorded (:mod:`._downloads`): the URL, its
        validators and the digest, so that an interrupted sync does not fetch it again.

        Raises IntegrityError (and keeps nothing: bytes that fail their check are
        dropped, since resuming them could only fail again) if the size or digest is
        not what the caller expected. Either may be None when not known (a file's
        digest is usually known only after download).
        """
        with translate_oserror("cannot store downloaded file", file=self.url):
            self._check_open()
            digest = self.digest
            try:
                if expected_size is not None and self.offset != expected_size:
                    raise IntegrityError(
                        "size differs", file=self.url, expected=expected_size, actual=self.offset
                    )
                if expected_digest is not None and digest != expected_digest:
                    raise IntegrityError(
                        "SHA-256 differs", file=self.url, expected=expected_digest, actual=digest
                    )
                self._objects.commit_fd(self._fd, self._dir_fd, self._data_name, digest,
                                        self.offset)
            except IntegrityError:
                self.abort()
                raise
            if self._downloads is not None:
                self._downloads.add(self.ref, self.url, digest, self.offset, etag=self.etag,
                                    last_modified=self.last_modified, source=self.source)
            self._remove()
            return digest

    def close(self) -> None:
        """Checkpoint and release the lock, keeping the bytes for a later resume."""
        if self._closed:
            return
        try:
            self.checkpoint()
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the partial download entirely."""
        if not self._closed:
            self._remove()

    def _remove(self) -> None:
        # Sidecar first: a crash in between leaves a data file with no claims, which
        # the next open truncates to nothing.
        # No directory fsync: if a power cut undoes the removal, the partial comes back
        # as it was (after a commit, as a second name of the object, which reopening
        # detects by its link count) and is only ever resumed or dropped again.
        for name in (self._meta_name, self._data_name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dir_fd)
        self._release()

    def _release(self) -> None:
        self._closed = True
        os.close(self._fd)  # closing drops the flock

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("ingest is closed")

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_sidecar(partial_fd: int, name: str) -> dict[str, Any] | None:
    """The decoded sidecar ``name``; None if it is damaged (unreadable, not JSON, not an
    object). An OSError of opening it (missing, a planted symlink) is raised."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=partial_fd)
    try:
        with os.fdopen(fd, "rb") as f:
            meta = json.loads(f.read())
    except (ValueError, OSError):  # a damaged sidecar: its download starts over
        return None
    return meta if isinstance(meta, dict) else None


def read_status(partial_fd: int, name: str) -> IngestStatus | None:
    """Parse one sidecar (``<ref>.json``); None if it is damaged or gone."""
    try:
        m = _read_sidecar(partial_fd, name)
        if m is None:
            return None
        return IngestStatus(
            ref=name.removesuffix(".json"),
            url=m["url"],
            etag=m.get("etag"),
            last_modified=m.get("last_modified"),
            expected_size=m.get("expected_size"),
            durable=int(m.get("durable", 0)),
            updated=float(m.get("updated", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def statuses(partial_fd: int) -> list[IngestStatus]:
    """Every partial download in ``partial_fd`` with a readable sidecar, by ref."""
    out = []
    for name in sorted(os.listdir(partial_fd)):
        if name.endswith(".json") and not name.startswith("."):
            st = read_status(partial_fd, name)
            if st is not None:
                out.append(st)
    return out


def remove_orphans(partial_fd: int, *, dry_run: bool = False) -> int:
    """Remove (unless ``dry_run``) each ``<ref>.data`` or ``<ref>.json`` without the
    other half; return how many. A pair is the resume point of a download: it stays."""
    names = set(os.listdir(partial_fd))
    n = 0
    for name in sorted(names):
        stem, _, ext = name.rpartition(".")
        other = stem + (".json" if ext == "data" else ".data")
        if ext in ("data", "json") and other not in names:
            n += 1
            if not dry_run:
                os.unlink(name, dir_fd=partial_fd)
    return n
