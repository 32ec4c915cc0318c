"""Immutable objects named by their SHA-256: ``objects/sha256/ab/abcdef...``.

An object appears under its name only whole and durable: its bytes are written
to ``tmp/``, fsynced, checked against the expected size and digest, made
read-only, then hardlinked into place (``link`` never replaces, so an object
that exists is never rewritten) and the fanout directory is fsynced. Putting
what exists is a success that writes nothing.

After a crash the store holds whole, correct objects and perhaps some
``tmp/.tmp-*`` files, which the next open removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ._atomic import clean_tmp, tmp_name, unlink_durably, write_all
from ._errors import IntegrityError, NotFoundError, UnsafePathError
from ._paths import open_dir_at

__all__ = ["CHUNK", "ObjectInfo", "Objects", "check_digest", "hash_file"]

#: Read size for hashing and copying: 1 MiB reads keep per-call overhead small
#: (hashlib runs ~1.5 GB/s here, docs/performance.md) while staying far below any memory concern.
CHUNK = 1024 * 1024

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_OBJECT_MODE = 0o444  # immutable: nobody, not even we, writes an object after commit


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters (it becomes a file name)."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise IntegrityError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def hash_file(f: BinaryIO) -> str:
    """SHA-256 of the rest of an open file, read CHUNK bytes at a time."""
    h = hashlib.sha256()
    while block := f.read(CHUNK):
        h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    """An object's digest and size, and its mtime: when its bytes were written."""

    digest: str
    size: int
    mtime: float = 0.0


class Objects:
    """The object area of a store rooted at ``state_fd`` (see module docstring).

    Thread-safe in the sense that matters: concurrent puts of the same bytes, from
    threads or processes, all succeed and leave one object.
    """

    def __init__(self, state_fd: int, state_dir: str) -> None:
        self._root = os.path.join(state_dir, "objects", "sha256")
        self._fd = open_dir_at(state_fd, "objects/sha256", create=True)
        self._tmp_fd = open_dir_at(state_fd, "tmp", create=True)
        clean_tmp(self._tmp_fd)

    def close(self) -> None:
        for fd in (self._fd, self._tmp_fd):
            os.close(fd)

    # -- read --------------------------------------------------------------------

    def path(self, digest: str) -> str:
        """Absolute path of an object, for messages.

        Never used to read or link an object: those go through directory fds.
        """
        check_digest(digest)
        return os.path.join(self._root, digest[:2], digest)

    def _fan(self, digest: str, *, create: bool = False) -> int:
        """The fanout directory of ``digest``, opened without following a symlink."""
        return open_dir_at(self._fd, check_digest(digest)[:2], create=create)

    def stat(self, digest: str) -> os.stat_result:
        """lstat of the object; NotFoundError if it is missing or not a regular file.

        Every access goes through directory fds opened with O_NOFOLLOW: a symlink
        planted in objects/ is refused (UnsafePathError), never followed.
        """
        try:
            fan = self._fan(digest)
        except FileNotFoundError:
            raise NotFoundError(f"no object {digest}") from None
        try:
            st = os.stat(digest, dir_fd=fan, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFoundError(f"no object {digest}") from None
        finally:
            os.close(fan)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"object {digest} is not a regular file")
        return st

    def has(self, digest: str) -> bool:
        try:
            self.stat(digest)
            return True
        except NotFoundError:
            return False

    def info(self, digest: str) -> ObjectInfo:
        return ObjectInfo(digest, self.stat(digest).st_size)

    def open(self, digest: str) -> BinaryIO:
        """Open an object for reading. Its bytes are trusted; see :meth:`verify` to check."""
        try:
            fan = self._fan(digest)
        except FileNotFoundError:
            raise NotFoundError(f"no object {digest}") from None
        try:
            fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fan)
        except FileNotFoundError:
            raise NotFoundError(f"no object {digest}") from None
        finally:
            os.close(fan)
        return os.fdopen(fd, "rb")

    def link_into(self, digest: str, dir_fd: int, name: str) -> None:
        """Hardlink the object as ``name`` in ``dir_fd`` (OSError as link(2) gives it)."""
        fan = self._fan(digest)
        try:
            os.link(digest, name, src_dir_fd=fan, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(fan)

    def read_verified(self, digest: str) -> bytes:
        """The whole object, after checking that it still hashes to its name."""
        with self.open(digest) as f:
            data = f.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError("object is corrupt", file=digest, expected=digest, actual=actual)
        return data

    def verify(self, digest: str) -> str:
        """Re-hash an object from disk; return the digest its bytes have now."""
        with self.open(digest) as f:
            return hash_file(f)

    def walk(self) -> Iterator[ObjectInfo]:
        """Every object, in no particular order (a planted symlink is skipped, not followed)."""
        for fan in sorted(os.listdir(self._fd)):
            try:
                fan_fd = open_dir_at(self._fd, fan)
            except (UnsafePathError, FileNotFoundError):
                continue
            try:
                for name in os.listdir(fan_fd):
                    if _DIGEST_RE.fullmatch(name):
                        st = os.stat(name, dir_fd=fan_fd, follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            yield ObjectInfo(name, st.st_size, st.st_mtime)
            finally:
                os.close(fan_fd)

    # -- write -------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its digest. Existing objects are not rewritten."""
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            return digest
        name, fd = self._tmp_file()
        try:
            write_all(fd, data)
            self.commit_fd(fd, self._tmp_fd, name, digest, len(data))
        finally:
            self._discard(fd, name)
        return digest

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a copy of the file at ``path``, hashing while copying; return its digest."""
        h = hashlib.sha256()
        name, fd = self._tmp_file()
        size = 0
        try:
            with open(path, "rb", buffering=0) as src:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := src.readinto(buf):
                    h.update(view[:n])
                    write_all(fd, view[:n])
                    size += n
            digest = h.hexdigest()
            if not self.has(digest):
                self.commit_fd(fd, self._tmp_fd, name, digest, size)
        finally:
            self._discard(fd, name)
        return digest

    def commit_fd(self, fd: int, dir_fd: int, name: str, digest: str, size: int) -> bool:
        """Make the file ``name`` in directory ``dir_fd`` (open as ``fd``) the object ``digest``.

        The link is made from the directory fd, never by path, so a symlink planted in
        place of the source directory (or of ``name``) is not followed.

        ``digest`` is what the caller computed while writing the bytes (and already
        compared with what it expected). Order (containerd's): fsync, check size, then
        read-only, link into place, fsync the fanout directory. Returns False if the
        object already existed (a success: nothing was rewritten). The caller removes
        ``name`` afterwards; work after the link is durable already.
        """
        check_digest(digest)
        os.fdatasync(fd)
        actual_size = os.fstat(fd).st_size
        if actual_size != size:
            raise IntegrityError("size differs", file=digest, expected=size, actual=actual_size)
        os.fchmod(fd, _OBJECT_MODE)
        fan_fd = open_dir_at(self._fd, digest[:2], create=True)
        try:
            try:
                os.link(name, digest, src_dir_fd=dir_fd, dst_dir_fd=fan_fd,
                        follow_symlinks=False)
            except FileExistsError:
                return False
            os.fsync(fan_fd)
        finally:
            os.close(fan_fd)
        return True

    def delete(self, digest: str) -> None:
        """Remove an object (gc and repair only). Missing is fine."""
        fan_fd = open_dir_at(self._fd, check_digest(digest)[:2], create=True)
        try:
            unlink_durably(fan_fd, digest)
        finally:
            os.close(fan_fd)

    # -- helpers -----------------------------------------------------------------

    def _tmp_file(self) -> tuple[str, int]:
        name = tmp_name("obj")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return name, os.open(name, flags, 0o600, dir_fd=self._tmp_fd)

    def _discard(self, fd: int, name: str) -> None:
        os.close(fd)
        # Not raised: the object (if any) is already durable; a leftover temp is
        # removed when the store next opens.
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._tmp_fd)
