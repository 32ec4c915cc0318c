"""The site directory a web server serves: ``site_dir/<name>/...`` (docs/design.md layout).

* ``<name>/versions/<version>/``: the origin's manifest byte for byte and every shard
  at its original relative path, hardlinked from the object store (copied where a
  link fails, e.g. site_dir on another filesystem). Built under a ``.tmp-`` name and
  renamed into place only when complete, so a version directory that exists is
  whole; never changed afterwards.
* ``<name>/<manifest>``: the entry point, the manifest with its weight paths
  pointing into ``versions/<version>/``; replaced by one atomic rename, each new one
  with an mtime a whole second past the one it replaces (:func:`replaced_mtime_ns`).
* ``<file>`` directly in site_dir: a file for the pages beside the models (the
  daemon's ``shardsync.js``), replaced by one atomic rename when its bytes change,
  by the entry points' mtime rule.

Every directory is opened below the site fd with O_NOFOLLOW (:mod:`._paths`), so a
symlink planted inside site_dir is never followed outward.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time

from ._atomic import (
    TMP_PREFIX,
    clean_tmp,
    clean_tmp_at,
    exists_at,
    list_at,
    read_at,
    rmtree_at,
    tmp_name,
    unlink_durably,
    write_atomic,
)
from ._errors import StorageError, UnsafePathError
from ._objects import Objects, hash_file
from ._paths import DIR_MODE, VERSIONS_DIR, check_name, open_dir, open_dir_at
from ._versions import FileEntry, Version

__all__ = ["MISSING", "NOT_REGULAR", "UNSAFE", "VERSIONS_DIR", "Site"]

# Why a published file is not its bytes (Site.check_published); repair tests for these
# exact values.
MISSING = "published file is missing"
UNSAFE = "a directory on its path is a symlink or not a directory; not following it"
NOT_REGULAR = "published file is not a regular file"

# A hardlink fails with these where a copy would work: another filesystem (EXDEV),
# a filesystem without links or one refusing them (EPERM, ENOTSUP), too many links (EMLINK).
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}

#: Bytes per sendfile(2) call when copying an object: large enough to be a few calls
#: for a 4 MiB shard, small enough to stay responsive to signals.
COPY_CHUNK = 8 * 1024 * 1024


class Site:
    """Builds version trees and swaps entry points below ``site_dir``."""

    def __init__(self, site_dir: str | os.PathLike[str]) -> None:
        self.path = os.fspath(site_dir)
        self._fd = open_dir(self.path, create=True)
        self.copies = 0  # files copied because a hardlink failed (for tests and metrics)

    def close(self) -> None:
        os.close(self._fd)

    def model_dir(self, name: str, *, create: bool = False) -> int:
        return open_dir_at(self._fd, check_name(name), create=create)

    # -- building ----------------------------------------------------------------

    def build_version(self, version: Version, objects: Objects) -> None:
        """Make ``<name>/versions/<id>/`` complete and durable (no-op if it exists)."""
        vfd = open_dir_at(self._fd, f"{version.name}/{VERSIONS_DIR}", create=True)
        try:
            if exists_at(vfd, version.id):
                return
            clean_tmp(vfd)  # a build of ours that crashed; nothing else writes here
            tmp = tmp_name(version.id)
            os.mkdir(tmp, DIR_MODE, dir_fd=vfd)
            try:
                self._build_into(vfd, tmp, version, objects)
                os.chmod(tmp, DIR_MODE, dir_fd=vfd)  # past the umask: the web server reads it
                os.rename(tmp, version.id, src_dir_fd=vfd, dst_dir_fd=vfd)
            except BaseException:
                # clean_tmp spares our own pid's temporaries (we may still be writing
                # them), so a failed build (ENOSPC, a cancel) removes its tree itself.
                with contextlib.suppress(OSError):
                    rmtree_at(vfd, tmp)
                raise
            os.fsync(vfd)
        finally:
            os.close(vfd)

    def _build_into(self, vfd: int, tmp: str, version: Version, objects: Objects) -> None:
        """Place every file of ``version`` below the temporary tree ``tmp`` and fsync it."""
        tfd = open_dir_at(vfd, tmp)
        dirs: dict[str, int] = {"": tfd}
        try:
            for entry in (version.manifest, *version.files):
                parent, _, base = entry.path.rpartition("/")
                if parent not in dirs:
                    dirs[parent] = open_dir_at(tfd, parent, create=True)
                self.place(objects, entry.digest, dirs[parent], base)
            for fd in dirs.values():
                os.fsync(fd)
        finally:
            for fd in dirs.values():
                os.close(fd)

    def place(self, objects: Objects, digest: str, dir_fd: int, name: str) -> None:
        """Put object ``digest`` at ``name`` in ``dir_fd``: a hardlink, else a durable copy."""
        try:
            objects.link_into(digest, dir_fd, name)
            return
        except OSError as exc:
            if exc.errno not in _LINK_FALLBACK:
                raise
        self.copies += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o644, dir_fd=dir_fd)
        try:
            with objects.open(digest) as f:
                size = os.fstat(f.fileno()).st_size
                offset = 0
                while offset < size:
                    sent = os.sendfile(out, f.fileno(), offset, min(COPY_CHUNK, size - offset))
                    if sent == 0:
                        raise OSError(errno.EIO, f"object {digest} shrank while copying")
                    offset += sent
            os.fchmod(out, 0o444)
            os.fsync(out)
        finally:
            os.close(out)

    # -- entry points ------------------------------------------------------------

    def write_entry(self, name: str, manifest_name: str, data: bytes) -> None:
        """Replace the entry point ``<name>/<manifest_name>`` by one atomic rename.

        Every entry point is written here (publish, rollback, pin, unpin, recovery,
        verify --repair), so every one gets its mtime from :func:`replaced_mtime_ns`.
        Callers hold the model's lock: nothing else replaces the file between the
        look at the old mtime and the rename.
        """
        fd = self.model_dir(name, create=True)
        try:
            write_atomic(fd, manifest_name, data, mode=0o644,
                         mtime_ns=replaced_mtime_ns(fd, manifest_name, time.time_ns()))
        finally:
            os.close(fd)

    def read_entry(self, name: str, manifest_name: str) -> bytes | None:
        try:
            fd = self.model_dir(name)
        except FileNotFoundError:
            return None
        try:
            return read_at(fd, manifest_name)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def entries(self, name: str) -> list[str]:
        """The files directly in ``<name>/`` (entry points), temporaries aside."""
        return list_at(self._fd, check_name(name), lambda fd, e: not e.startswith(TMP_PREFIX)
                       and stat.S_ISREG(os.stat(e, dir_fd=fd, follow_symlinks=False).st_mode))

    def clean_temporaries(self) -> None:
        """Remove temporaries of dead writers in site_dir, ``<name>/`` and ``<name>/versions``."""
        clean_tmp(self._fd)
        for name in self.models():
            for rel in (name, f"{name}/{VERSIONS_DIR}"):
                clean_tmp_at(self._fd, rel)

    def remove_entry(self, name: str, manifest_name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fd = self.model_dir(name)
            try:
                unlink_durably(fd, manifest_name)
            finally:
                os.close(fd)

    # -- files at the site's root ------------------------------------------------

    def write_root_file(self, name: str, data: bytes) -> bool:
        """Make ``site_dir/<name>`` hold ``data`` (mode 0644); return whether it wrote.

        Nothing is written when the file already has those bytes and that mode, so a
        page's HTTP cache keeps validating the same file. A symlink at ``name`` is
        replaced, never followed (the rename replaces the link itself); a directory
        there (a model of that name) fails with IsADirectoryError.
        """
        check_name(name)
        if name.startswith(TMP_PREFIX):  # clean_temporaries would take it for a leftover
            raise UnsafePathError(f"{name!r} is a temporary's name", file=name)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self._fd)
        except FileNotFoundError:
            fd = None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # a symlink: replaced below
                raise
            fd = None
        if fd is not None:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name)
                same = (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
                        and st.st_size == len(data) and f.read() == data)
            if same:
                return False
        # Served with nginx's validators too (no-cache): the entry points' mtime rule.
        write_atomic(self._fd, name, data, mode=0o644,
                     mtime_ns=replaced_mtime_ns(self._fd, name, time.time_ns()))
        return True

    # -- published files, one at a time (verify, repair, re-publish) ---------------

    def _published_dir(self, version: Version, relpath: str) -> tuple[int, str]:
        """(fd of the directory holding published file ``relpath``, its base name).

        Walked from the site fd with O_NOFOLLOW: FileNotFoundError if a directory is
        missing, UnsafePathError if one is a symlink or not a directory. The caller
        closes the fd.
        """
        parent, _, base = relpath.rpartition("/")
        rel = f"{VERSIONS_DIR}/{version.id}" + (f"/{parent}" if parent else "")
        mfd = self.model_dir(version.name)
        try:
            return open_dir_at(mfd, rel), base
        finally:
            os.close(mfd)

    def check_published(self, version: Version, entry: FileEntry, objects: Objects, *,
                        rehash: bool = False) -> str | None:
        """Why the published file of ``entry`` is not its bytes, or None if it is.

        A hardlink of the (just verified) object is not re-hashed unless ``rehash``.
        Nothing but a regular file below real directories is ever opened (a FIFO would
        block a read, a symlink lead outside site_dir).
        """
        try:
            dfd, base = self._published_dir(version, entry.path)
        except FileNotFoundError:
            return MISSING
        except UnsafePathError:
            return UNSAFE
        try:
            try:
                st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return MISSING
            if not stat.S_ISREG(st.st_mode):
                return NOT_REGULAR
            if st.st_size != entry.size:
                return f"size is {st.st_size}, expected {entry.size}"
            if not rehash:
                obj = objects.stat(entry.digest)
                if (st.st_dev, st.st_ino) == (obj.st_dev, obj.st_ino):
                    return None  # the object itself, hardlinked, and the object was verified
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(base, flags, dir_fd=dfd)
            except FileNotFoundError:
                return MISSING
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # became a symlink since the stat
                    return NOT_REGULAR
                raise
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return NOT_REGULAR  # swapped since the stat
                actual = hash_file(f)
        finally:
            os.close(dfd)
        if actual != entry.digest:
            return f"content hashes to {actual}, expected {entry.digest}"
        return None

    def unlink_published(self, version: Version, entry: FileEntry) -> None:
        """Remove one published file (its directory walked without following symlinks)."""
        try:
            dfd, base = self._published_dir(version, entry.path)
        except FileNotFoundError:
            return
        try:
            unlink_durably(dfd, base)
        finally:
            os.close(dfd)

    def fill(self, version: Version, objects: Objects) -> None:
        """Put back files missing from an existing version directory (verify --repair
        removes files whose object was corrupt; publishing the version again restores
        them once the object is good). A symlink on the way raises UnsafePathError."""
        for entry in (version.manifest, *version.files):
            try:
                dfd, base = self._published_dir(version, entry.path)
            except FileNotFoundError:
                pass
            else:
                try:
                    st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                        continue
                except FileNotFoundError:
                    pass
                finally:
                    os.close(dfd)
            self.replace_published(version, entry, objects)

    def replace_published(self, version: Version, entry: FileEntry, objects: Objects) -> None:
        """Put one published file back from its object: placed under a temp name, renamed."""
        parent, _, base = entry.path.rpartition("/")
        rel = f"{VERSIONS_DIR}/{version.id}" + (f"/{parent}" if parent else "")
        mfd = self.model_dir(version.name)
        try:
            dfd = open_dir_at(mfd, rel, create=True)
        finally:
            os.close(mfd)
        try:
            tmp = tmp_name(base)
            try:
                self.place(objects, entry.digest, dfd, tmp)
                os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                # clean_tmp spares our own pid's temporaries: remove it here
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- what a web server (another user) can read --------------------------------

    def unreadable(self) -> list[tuple[str, int, bool]]:
        """What a web server running as another user could not get through, as
        ``(path, mode, is_dir)``: site_dir, or a directory in it, without o+x, a regular
        file in it without o+r (temporaries and symlinks aside: nginx-config refuses
        both). Paths are absolute. Walked without following symlinks. The directories
        above site_dir are the operator's and not looked at."""
        out: list[tuple[str, int, bool]] = []
        root = os.path.abspath(self.path)
        mode = os.fstat(self._fd).st_mode
        if not mode & stat.S_IXOTH:
            out.append((root, stat.S_IMODE(mode), True))
        self._unreadable_below(self._fd, root, out)
        return out

    def _unreadable_below(self, fd: int, path: str, out: list[tuple[str, int, bool]]) -> None:
        for e in sorted(os.listdir(fd)):
            if e.startswith(TMP_PREFIX):
                continue
            st = os.stat(e, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if not st.st_mode & stat.S_IXOTH:
                    out.append((f"{path}/{e}", stat.S_IMODE(st.st_mode), True))
                sub = open_dir_at(fd, e)
                try:
                    self._unreadable_below(sub, f"{path}/{e}", out)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
                out.append((f"{path}/{e}", stat.S_IMODE(st.st_mode), False))

    def make_readable(self, path: str) -> bool:
        """Give ``path`` (one of :meth:`unreadable`'s, below site_dir) the read bits a web
        server needs: r-x for group and others on a directory, r-- on a file. Returns
        False, changing nothing, for a path outside site_dir. Walked to without
        following symlinks; the file is opened O_NOFOLLOW and changed through its fd."""
        root = os.path.abspath(self.path)
        if path == root:
            fd = os.dup(self._fd)
        elif path.startswith(root + "/"):
            parent, _, base = path[len(root) + 1:].rpartition("/")
            dfd = open_dir_at(self._fd, parent)
            try:
                fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            finally:
                os.close(dfd)
        else:
            return False
        try:
            st = os.fstat(fd)
            extra = 0o055 if stat.S_ISDIR(st.st_mode) else 0o044
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | extra)
        finally:
            os.close(fd)
        return True

    # -- listing and removal -----------------------------------------------------

    def version_ids(self, name: str) -> list[str]:
        """Complete version directories of a model (temporary builds are not listed)."""
        return list_at(self._fd, f"{check_name(name)}/{VERSIONS_DIR}",
                       lambda _fd, e: not e.startswith(TMP_PREFIX))

    def remove_version(self, name: str, version_id: str) -> None:
        """Remove a version directory: renamed away first (atomic), then deleted, so a
        crash never leaves a half-removed directory under the version's name."""
        rel = f"{check_name(name)}/{VERSIONS_DIR}"
        with contextlib.suppress(FileNotFoundError):
            fd = open_dir_at(self._fd, rel)
            try:
                _remove_atomically(fd, version_id, f"{os.path.abspath(self.path)}/{rel}",
                                   "cannot remove old version")
            finally:
                os.close(fd)

    def remove_model(self, name: str) -> None:
        """Remove ``<name>/`` entirely, by the same rename-then-delete."""
        _remove_atomically(self._fd, check_name(name), os.path.abspath(self.path),
                           "cannot remove model")

    def models(self) -> list[str]:
        return sorted(
            e for e in os.listdir(self._fd)
            if not e.startswith(".") and stat.S_ISDIR(
                os.stat(e, dir_fd=self._fd, follow_symlinks=False).st_mode
            )
        )


def replaced_mtime_ns(dir_fd: int, name: str, now_ns: int) -> int:
    """The mtime for a new entry point (or site root file) ``name`` in ``dir_fd``:
    ``now_ns``, or the start of the second after the mtime of the file it replaces, if
    that is later.

    Why: a web server's validators are the file's mtime in whole seconds (nginx's ETag
    is ``hex(mtime)-hex(size)``, Last-Modified the mtime), and the entry point is a new
    file on every publish. Two entry points of one size written within a second, or
    after the clock went back (a kiosk without RTC switched off for the night), would
    share them, and a cache or a downstream shardsync would be told 304 for the old
    manifest. An mtime strictly greater in whole seconds makes every new entry point's
    validators new, so they can be served and trusted (docs/design.md, "Serving
    site_dir"). The price, only when publishes outrun the clock: an mtime a few seconds
    ahead of it. A previous file that is missing, a symlink (the rename replaces the
    link, never its target) or not a regular file counts as none.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return now_ns
    if not stat.S_ISREG(st.st_mode):
        return now_ns
    after = (st.st_mtime_ns // 1_000_000_000 + 1) * 1_000_000_000
    return max(now_ns, after)


def _remove_atomically(dir_fd: int, name: str, where: str, what: str) -> None:
    """Rename ``name`` in ``dir_fd`` (whose path is ``where``) to a temporary, then delete
    it. A failure is a StorageError saying ``what`` and naming the path that failed (a
    root-owned directory left by `sudo shardsync sync` fails the delete: the message
    says which file, and that the rest waits under the temporary name)."""
    tmp = tmp_name("rm")
    try:
        os.rename(name, tmp, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError.from_oserror(exc, what, file=f"{where}/{name}") from exc
    os.fsync(dir_fd)
    try:
        rmtree_at(dir_fd, tmp)
    except OSError as exc:
        failed = f"{where}/{exc.filename or tmp}"
        raise StorageError(f"{what}: {exc.strerror or exc}: {failed} (renamed from {name} "
                           f"for removal; what is left stays under {tmp})",
                           file=f"{where}/{name}") from exc
