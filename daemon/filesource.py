"""``file://`` URLs: a model's manifest and shards read from a mounted directory.

A USB stick, a read-only medium or a directory another tool fills is an origin like an
HTTP server, so a ``file://`` model goes through the same :class:`.sync.Syncer` and
the same checks (group sizes, signatures, the store's hashing commit); only the
transport differs. :class:`.fetch.Fetcher` hands these URLs here, so nothing above it
knows where the bytes came from.

What a read does, and why:

* Validators: ``(size, mtime_ns)`` of the file, written as an ETag (``"file-<size>-
  <mtime_ns>"``, hex). A check with the validators of the last good sync costs one
  ``lstat`` and reads nothing when they match (a 304), the way an HTTP origin's
  ``If-None-Match`` does; a copy tool that keeps mtimes (``cp -p``, ``rsync -t``) and
  changes bytes of the same length is not noticed, exactly as an origin whose ETag is
  size and mtime (nginx's) is not.
* Paths: a ``.`` or ``..`` segment is refused (shard paths are already refused by
  :func:`shardsync.store.check_relpath`, so this covers the manifest URL itself), and
  the final component is opened with ``O_NOFOLLOW``: a shard that is a symlink is
  refused rather than followed out of the directory. Only a regular file is read
  (``O_NONBLOCK`` keeps a FIFO from blocking the open).
* Caps: the manifest is read up to ``max_manifest_bytes``, a file up to its weight
  group's size or its signature's length (``max_size``), checked against the file's
  size before any byte is read, and reading stops there whatever the file grows to.
* A file that changes while it is read (size or mtime differ after the read) fails:
  its bytes are hashed, so the store stays right, but the validators would describe
  other bytes.
* No retries and no resume: a local read that failed does not get better in half a
  second, and re-reading costs less than keeping a partial. Every failure drops the
  partial (:meth:`shardsync.store.Ingest.abort`).

Errors: a missing file is an :class:`.errors.UpstreamError` with ``status=404``, as an
origin's 404 is (so a signed model without its ``.sig.json`` says "no signature"); a
symlink an :class:`shardsync.store.UnsafePathError`; other OS errors a
:class:`shardsync.store.StorageError` naming the file. Each call is blocking: the fetcher
runs it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from shardsync.store import IntegrityError, StorageError, Store, UnsafePathError

from .errors import UpstreamError
from .httpanswers import Validators
from .urls import file_path

__all__ = ["FileRead", "is_file_url", "read_file", "read_manifest", "validators_of"]

#: Bytes per read(2): the store's own read size for hashing and copying (CHUNK, 1 MiB;
#: docs/performance.md "Hashing and copy read size"); the ingest writes (and hashes)
#: each chunk before the next read, so memory stays at one chunk per file.
_CHUNK = 1 << 20

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def is_file_url(url: str) -> bool:
    """Whether ``url`` is a ``file:`` URL (scheme compared case-insensitively)."""
    return url[:5].lower() == "file:"


def validators_of(st: os.stat_result) -> Validators:
    """The validators of a file with this stat: its size and mtime in nanoseconds."""
    return Validators(etag=f'"file-{st.st_size:x}-{st.st_mtime_ns:x}"')


@dataclass(frozen=True)
class FileRead:
    """A file read into the store: ``digest`` is None when the validators matched."""

    digest: str | None
    size: int
    validators: Validators


def read_manifest(url: str, validators: Validators | None, *, cap: int,
                  max_size: int | None = None) -> tuple[bytes | None, Validators]:
    """The manifest at ``url`` and its validators; ``None`` for the bytes when
    ``validators`` still describe the file (nothing is read). Longer than ``max_size``
    (a signature's length): IntegrityError; longer than ``cap``: UpstreamError."""
    path = _path(url)
    if validators and _unchanged(path, url, validators):
        return None, validators
    fd, st = _open(path, url)
    try:
        if max_size is not None and st.st_size > max_size:
            raise IntegrityError("manifest is longer than its signature lists", file=url,
                                 expected=max_size, actual=st.st_size)
        if st.st_size > cap:
            raise UpstreamError(f"manifest is larger than {cap} bytes", file=url)
        with _translated(url):
            data = _read_upto(fd, st.st_size + 1)
        _check_same(fd, st, len(data), url)
        return data, validators_of(st)
    finally:
        os.close(fd)


def read_file(url: str, store: Store, *, validators: Validators | None,
              max_size: int | None, source: str | None, expected_digest: str | None,
              limit: str, progress: Callable[[int], None] | None = None) -> FileRead:
    """Read the file at ``url`` into ``store`` through an ingest (hashed as it is
    written; committed only with ``expected_digest`` when given), or, when
    ``validators`` still describe it and no partial of it is held, read nothing.

    ``max_size`` is the most bytes it may have (``limit`` names why, in the error). A
    failure or an IntegrityError leaves nothing behind (the partial is aborted); the
    commit leaves a download record naming ``source``, as an HTTP download's does.
    """
    path = _path(url)
    if validators and not store.has_ingest(url) and _unchanged(path, url, validators):
        return FileRead(None, 0, validators)
    fd, st = _open(path, url)
    try:
        size = st.st_size
        if max_size is not None and size > max_size:
            raise IntegrityError(f"file is larger than {limit}", file=url,
                                 expected=f"at most {max_size}", actual=size)
        got = validators_of(st)
        ingest = store.open_ingest(url, source=source)
        try:
            ingest.start(etag=got.etag, last_modified=None, expected_size=size, offset=0)
            left = size + 1  # one more: a file that grew is noticed, not cut
            while left > 0:
                with _translated(url):
                    chunk = os.read(fd, min(_CHUNK, left))
                if not chunk:
                    break
                ingest.write(chunk, auto_checkpoint=False)  # never resumed: see above
                left -= len(chunk)
                if progress is not None:
                    progress(len(chunk))
            _check_same(fd, st, ingest.offset, url)
            digest = ingest.commit(size, expected_digest)
        except BaseException:
            if not ingest.closed:
                ingest.abort()
            raise
        return FileRead(digest, size, got)
    finally:
        os.close(fd)


def _path(url: str) -> str:
    try:
        return file_path(url)
    except ValueError as exc:
        raise UpstreamError(str(exc), file=url) from None


def _unchanged(path: str, url: str, validators: Validators) -> bool:
    """Whether the regular file at ``path`` still has ``validators`` (one lstat)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False  # the open that follows says "not found"
    except OSError as exc:
        raise _error(exc, url) from exc
    return stat.S_ISREG(st.st_mode) and validators_of(st) == validators


def _open(path: str, url: str) -> tuple[int, os.stat_result]:
    """Open the regular file at ``path`` (never through a symlink as its last component)."""
    try:
        fd = os.open(path, _OPEN)
    except OSError as exc:
        raise _error(exc, url) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UpstreamError("not a regular file", file=url)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check_same(fd: int, before: os.stat_result, read: int, url: str) -> None:
    """UpstreamError unless the file still has the size and mtime it had when opened."""
    with _translated(url):
        after = os.fstat(fd)
    if read != before.st_size or validators_of(after) != validators_of(before):
        raise UpstreamError("the file changed while it was read (try again when the copy "
                            "to it has finished)", file=url)


def _read_upto(fd: int, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = os.read(fd, min(_CHUNK, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class _translated:
    """Turn an OSError from reading ``url`` into the error :func:`_error` gives."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            raise _error(exc, self.url) from exc


def _error(exc: OSError, url: str) -> Exception:
    """The shardsync error for an OSError from opening or reading ``url``."""
    if exc.errno == errno.ENOENT:
        return UpstreamError("not found (no such file)", status=404, file=url)
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return UnsafePathError("is a symbolic link: refused (a link could point anywhere)",
                               file=url)
    if exc.errno == errno.ENOTDIR:
        return UpstreamError("not found (a component of the path is not a directory)",
                             status=404, file=url)
    return StorageError(f"cannot read: {exc.strerror or exc}", file=url)
