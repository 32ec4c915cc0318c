"""`shardsync export` and `shardsync import`: models carried on a USB stick.

An export is a plain TF.js directory per model, ``DIR/<name>/``: the origin's manifest
byte for byte (the version's own, as ``site_dir/<name>/versions/<v>/`` holds it, not
the rewritten entry point), its shards at their original relative paths, and its
``<manifest>.sig.json`` if the version was let in by a signature. Any web server can
serve it as an origin, and ``shardsync import`` reads it back.

An import is a sync: the model, with its URL replaced by
``file://DIR/<name>/<manifest>``, goes through the same :class:`.sync.Syncer` as a
download (:func:`.oneshot.sync_models`), so it is verified exactly as one is (group
sizes, the signature and the trust record's rollback check when keys are configured,
every byte hashed by the store's ingest) and publishes the same version id. It
touches no network: every URL it reads is a ``file://`` one (:mod:`.filesource`).

After an import, the version records name the ``file://`` URLs. A later check
against the origin therefore has no validators to send for the origin's URLs: for a
signed model that costs one request (the signature; every file it lists is held, so
none is asked for); an unsigned model's manifest and shards are downloaded once more,
found to be the same bytes (same objects, same version id, nothing re-published), and
from then on checked conditionally as usual.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardsync.store import (
    IntegrityError,
    NotFoundError,
    ShardsyncError,
    StorageError,
    Store,
    UnsafePathError,
    check_relpath,
    write_all,
)

from .config import Config, ModelConfig
from .tfjs import manifest_filename
from .urls import file_url

if TYPE_CHECKING:
    from .sync import SyncResult

__all__ = ["Exported", "export_models", "import_models", "import_sources"]

#: Directories an export makes: any web server's user may list and enter them.
_DIR_MODE = 0o755
#: Files an export writes: readable by a web server running as another user.
_FILE_MODE = 0o644

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Exported:
    """What the export of one model did; ``error`` is set when it failed."""

    name: str
    version: str | None = None
    files: int = 0
    bytes: int = 0
    directory: str = ""
    error: ShardsyncError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "version": self.version,
                "files": self.files, "bytes": self.bytes, "dir": self.directory,
                "error": str(self.error) if self.error else None}


# -- export ---------------------------------------------------------------------------


def export_models(store: Store, directory: Path, names: Sequence[str]) -> list[Exported]:
    """Write the current version of each of ``names`` into ``directory/<name>/``.

    Each file is written under a temporary name, fsynced and renamed into place (the
    directory fsynced after), so a crash leaves every file old or new, never half; the
    manifest goes last, so an export cut short leaves either the previous export's
    manifest (whose shards are still there: nothing is removed) or none. Every byte is
    hashed on the way and must match its object's name: a damaged object is not
    carried to other machines. ``directory`` itself may be a symlink (a mount point);
    below it, a symlink where a directory or file goes is refused (UnsafePathError),
    never written through. A model's failure is its own (``error``); the others go on.
    """
    results = []
    top = _open_top(directory)
    try:
        for name in names:
            result = Exported(name, directory=str(directory / name))
            try:
                _export_one(store, top, name, result)
            except ShardsyncError as exc:
                result.error = exc.with_context(model=name)
            results.append(result)
    finally:
        os.close(top)
    return results


def _export_one(store: Store, top: int, name: str, result: Exported) -> None:
    version = store.current(name)
    if version is None:
        raise NotFoundError("has no published version to export", model=name)
    result.version = version.id
    entries = [*version.files, version.manifest]  # the manifest last: see export_models
    model_fd = _subdir(top, name, where=name)
    try:
        for entry in entries:
            check_relpath(entry.path)
            where = f"{name}/{entry.path}"
            parent, _, leaf = entry.path.rpartition("/")
            fd = _subdir(model_fd, parent, where=f"{name}/{parent}") if parent else model_fd
            try:
                _write_object(store, fd, leaf, entry.digest, entry.size, where=where)
            finally:
                if fd != model_fd:
                    os.close(fd)
            result.files += 1
            result.bytes += entry.size
    finally:
        os.close(model_fd)


def _open_top(directory: Path) -> int:
    """``directory`` opened (made if missing): the one path an export follows as given."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open the export directory: {exc.strerror or exc}",
                           file=str(directory)) from exc


def _subdir(dir_fd: int, rel: str, *, where: str) -> int:
    """The directory ``rel`` below ``dir_fd``, each component made if missing (0755,
    whatever the umask; an existing one keeps its mode) and opened with O_NOFOLLOW (a
    symlink is an UnsafePathError naming ``where``)."""
    fd = os.dup(dir_fd)
    try:
        for part in rel.split("/"):
            made = True
            try:
                os.mkdir(part, _DIR_MODE, dir_fd=fd)
            except FileExistsError:
                made = False
            except OSError as exc:
                raise StorageError(f"cannot make directory: {exc.strerror or exc}",
                                   file=where) from exc
            try:
                sub = os.open(part, _DIR_OPEN, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError("is a symbolic link or not a directory: refused "
                                          "(an export never writes through a link)",
                                          file=where) from exc
                raise StorageError(f"cannot open directory: {exc.strerror or exc}",
                                   file=where) from exc
            os.close(fd)
            fd = sub
            if made:  # the umask must not narrow what a web server can list
                try:
                    _set_mode(fd, _DIR_MODE)
                except OSError as exc:
                    raise StorageError(f"cannot set the mode of: {exc.strerror or exc}",
                                       file=where) from exc
        return fd
    except BaseException:
        os.close(fd)
        raise


def _set_mode(fd: int, mode: int) -> None:
    """fchmod ``fd``, except where the filesystem has no Unix modes: a FAT or exFAT stick
    refuses (EPERM, ENOTSUP) and its mount options decide who may read."""
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _write_object(store: Store, dir_fd: int, leaf: str, digest: str, size: int, *,
                  where: str) -> None:
    """Write object ``digest`` as ``leaf`` in ``dir_fd``: temp, fsync, rename, fsync dir."""
    try:
        st: os.stat_result | None = os.lstat(leaf, dir_fd=dir_fd)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StorageError(f"cannot look at: {exc.strerror or exc}", file=where) from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafePathError("is a symbolic link or not a regular file: refused (an export "
                              "never writes through a link)", file=where)
    tmp = f".tmp-export-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        fd = os.open(tmp, _CREATE, _FILE_MODE, dir_fd=dir_fd)
        try:
            h = hashlib.sha256()
            n = 0
            for block in store.iter_object(digest):
                h.update(block)
                n += len(block)
                write_all(fd, block)
            if (n, h.hexdigest()) != (size, digest):
                raise IntegrityError("the store's object is damaged (run shardsync verify "
                                     "--repair); not exported", file=where,
                                     expected=f"{size} bytes, {digest}",
                                     actual=f"{n} bytes, {h.hexdigest()}")
            _set_mode(fd, _FILE_MODE)  # whatever the umask: a web server reads it
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write: {exc.strerror or exc}", file=where) from exc
        raise


# -- import ---------------------------------------------------------------------------


def import_sources(config: Config, directory: Path,
                   names: Sequence[str]) -> tuple[list[ModelConfig], list[str]]:
    """The models to import from ``directory``, each with its URL replaced by the
    ``file://`` URL of ``directory/<name>/<manifest>`` (the manifest named as in the
    model's own URL), and the configured models that are not there.

    With ``names``, each is imported whether or not it is there (a missing one fails
    its sync, saying "not found"); without, every configured model that has a
    ``directory/<name>/`` is, and the rest are listed as not there. ``DIR/<name>``
    being a symlink is refused (UnsafePathError): what is imported must be what is on
    the medium. NotFoundError for a name the config does not have.
    """
    top = Path(os.path.abspath(directory))  # no '..' left: file_path refuses them
    chosen = [config.model(n) for n in names] if names else list(config.models)
    out: list[ModelConfig] = []
    absent: list[str] = []
    for model in chosen:
        here = top / model.name
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise StorageError(f"cannot look at: {exc.strerror or exc}",
                               model=model.name, file=str(here)) from exc
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UnsafePathError("is a symbolic link: refused (import reads the directory "
                                  "on the medium itself)", model=model.name, file=str(here))
        if st is None and not names:
            absent.append(model.name)
            continue
        url = file_url(here / manifest_filename(model.url))
        # No mirrors: an import reads the medium alone, never the network.
        out.append(replace(model, url=url, userinfo=None, mirrors=(), mirror_userinfo=()))
    return out, absent


async def import_models(config: Config, store: Store, models: Sequence[ModelConfig],
                        show_progress: bool = False) -> list[SyncResult]:
    """Sync ``models`` (from :func:`import_sources`) through the one Syncer path."""
    from .oneshot import sync_models

    return await sync_models(config, store, [m.name for m in models], show_progress,
                             models=models)
