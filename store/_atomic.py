"""Durable small-file writes and safe removal, relative to directory fds.

The one recipe for durability in shardsync: write a temporary name, fsync it,
rename it over the target, fsync the directory. A power cut before the rename
leaves only a ``.tmp-*`` file (removed by :func:`clean_tmp` on the next open);
after the directory fsync the new content is the file's content for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable

from ._errors import UnsafePathError
from ._paths import open_dir_at

__all__ = [
    "TMP_PREFIX",
    "clean_tmp",
    "clean_tmp_at",
    "exists_at",
    "list_at",
    "read_at",
    "rmtree_at",
    "tmp_name",
    "unlink_durably",
    "write_all",
    "write_atomic",
]

#: Every temporary file or directory shardsync makes starts with this; check_relpath
#: refuses it in manifests, so a model can never collide with one.
TMP_PREFIX = ".tmp-"

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: write(2) calls of at most 256 KiB ran 4-5 GB/s into the page cache here, 1 MiB ones
#: ~0.9 GB/s (docs/performance.md), so big buffers are written in slices of this size.
WRITE_SLICE = 256 * 1024


#: How much of the hint a temporary name keeps: the hint is for people reading a
#: directory, and a temporary of a 255-byte name must itself stay under 255 bytes.
_TMP_HINT_MAX = 64


def tmp_name(hint: str = "") -> str:
    """A fresh temporary name, ``.tmp-<hint>-<pid>-<random>``: the pid tells
    :func:`clean_tmp` whether its writer may still be at work. The hint is cut to
    64 characters, so the temporary of any legal file name is a legal name too."""
    return f"{TMP_PREFIX}{hint[:_TMP_HINT_MAX]}-{os.getpid()}-{secrets.token_hex(6)}"


def _writer_alive(name: str) -> bool:
    """Whether the process that made temporary ``name`` still runs (pid reuse aside)."""
    parts = name.split("-")
    try:
        pid = int(parts[-2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` in slices of at most WRITE_SLICE."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:WRITE_SLICE])
        view = view[n:]


def write_atomic(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644,
                 durable: bool = True, mtime_ns: int | None = None) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data``: temp, fsync, rename, fsync dir.

    A crash at any point leaves either the old content or the new one under
    ``name`` (plus perhaps a ``.tmp-*`` file to clean). With ``durable=False`` the two
    fsyncs are left out: a crash of the process still leaves old or new, a power cut
    may leave either or a damaged file, so use it only where any of those is safe.
    ``mtime_ns`` (atime too) is set on the temporary through its fd, before the fsync,
    so the file appears under ``name`` with it and keeps it after a power cut.
    """
    tmp = tmp_name(name)
    fd = os.open(tmp, _CREATE, mode, dir_fd=dir_fd)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)  # the umask must not narrow what a web server can read
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if durable:
        os.fsync(dir_fd)


def read_at(dir_fd: int, name: str, *, where: str | None = None) -> bytes:
    """Read a whole (small) file below ``dir_fd``, refusing to follow a symlink.

    A symlink where the file should be (planted, or left by someone's tooling) is an
    UnsafePathError naming ``where`` (the file's path for messages, e.g. ``refs/bert``;
    default ``name``): it could point anywhere, so its target is never read, and the
    bare ELOOP that O_NOFOLLOW gives would name neither the file nor the reason.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError("is a symlink, which shardsync never follows (remove it)",
                                  file=where or name) from exc
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def rmtree_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a file or a tree) below ``dir_fd``; symlinks are removed, never followed.

    ``shutil.rmtree`` with ``dir_fd`` uses openat/unlinkat and is safe against symlink
    races on Linux. Missing is fine. An OSError names, as its ``filename``, the path
    below ``dir_fd`` that failed (``name/sub/file``; rmtree's own names only the last
    component, which tells an operator nothing).
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if sys.version_info >= (3, 12):  # onerror is deprecated there
            shutil.rmtree(name, dir_fd=dir_fd, onexc=lambda _f, p, e: _raise_with_path(p, e))
        else:
            shutil.rmtree(name, dir_fd=dir_fd,
                          onerror=lambda _f, p, info: _raise_with_path(p, info[1]))
    else:
        os.unlink(name, dir_fd=dir_fd)


def _raise_with_path(path: str, exc: BaseException) -> None:
    """rmtree's error hook: re-raise its OSError naming ``path`` (relative to its dir_fd)."""
    if isinstance(exc, OSError):
        raise OSError(exc.errno, exc.strerror, path) from exc
    raise exc


def unlink_durably(dir_fd: int, *names: str) -> None:
    """Remove each of ``names`` in ``dir_fd`` that is there (missing is fine), then
    fsync the directory once, so that the removals survive a power cut."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
    os.fsync(dir_fd)


def list_at(dir_fd: int, relpath: str,
            keep: Callable[[int, str], bool] | None = None) -> list[str]:
    """The sorted names in directory ``relpath`` below ``dir_fd``; none if it is missing.

    The directory is walked to as by :func:`open_dir_at` (never through a symlink:
    UnsafePathError). ``keep(fd, name)``, given the listed directory's fd, filters.
    """
    try:
        fd = open_dir_at(dir_fd, relpath)
    except FileNotFoundError:
        return []
    try:
        return sorted(e for e in os.listdir(fd) if keep is None or keep(fd, e))
    finally:
        os.close(fd)


def clean_tmp(dir_fd: int) -> int:
    """Remove the ``.tmp-*`` entries directly in ``dir_fd`` whose writer is gone.

    Only a writer that crashed leaves these behind. Another process may share the
    store (a `shardsync sync` beside the service), so a temporary whose process still
    runs is left alone. Returns how many were removed.
    """
    n = 0
    for entry in os.listdir(dir_fd):
        if entry.startswith(TMP_PREFIX) and not _writer_alive(entry):
            rmtree_at(dir_fd, entry)
            n += 1
    return n


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists below ``dir_fd`` (a symlink counts as existing; not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def clean_tmp_at(dir_fd: int, relpath: str) -> None:
    """:func:`clean_tmp` in the directory ``relpath`` below ``dir_fd``, if it is there.

    Best effort (start-up cleaning must not fail the open): a missing directory, one
    that is a planted symlink (never followed), or an I/O error leaves it as it is.
    """
    with contextlib.suppress(OSError, UnsafePathError):
        fd = open_dir_at(dir_fd, relpath)
        try:
            clean_tmp(fd)
        finally:
            os.close(fd)
