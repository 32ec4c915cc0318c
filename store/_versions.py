"""Version records, refs and history: which versions of a model exist and which is current.

* ``snapshots/<name>/<version>.json``: one version, immutable once written: the
  manifest (file name, digest, size) and every shard (relative path, digest, size,
  plus the origin metadata the fetcher wants back: canonical URL and validators).
* ``refs/<name>``: the current version id, one line, replaced atomically.
* ``history/<name>.json``: when each version became current and stopped being
  current, so publishing can keep a version a page may still be reading.

A version id is the short form of the tree digest (docs/design.md): SHA-256 over the
manifest's digest and every file's path and digest. Validators are not part of it:
the same bytes under a new ETag are the same version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._atomic import exists_at, list_at, read_at, rmtree_at, unlink_durably, write_atomic
from ._errors import IntegrityError, NotFoundError, UnsafePathError
from ._objects import check_digest
from ._paths import check_manifest_name, check_name, check_relpath, open_dir_at

__all__ = ["FileEntry", "Version", "Versions", "tree_digest"]

#: Hex digits of the tree digest used as a version id: 64 bits, ample for the few
#: versions one model ever has, and short enough for URLs and directory names.
VERSION_ID_LEN = 16

#: Entries kept in a model's history file; far more than keep_versions ever needs.
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its relative path, digest and size, plus origin metadata."""

    path: str
    digest: str
    size: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "digest": self.digest, "size": self.size}
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileEntry:
        return cls(
            check_relpath(d["path"]), check_digest(d["digest"]), int(d["size"]), d.get("meta", {})
        )


def tree_digest(manifest: FileEntry, files: Iterable[FileEntry]) -> str:
    """SHA-256 over the manifest digest and every file's path and digest (sorted by path)."""
    h = hashlib.sha256()
    h.update(f"manifest {manifest.digest} {manifest.path}\n".encode())
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"file {f.digest} {f.path}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Version:
    """One version of a model, as recorded in ``snapshots/<name>/<id>.json``."""

    name: str
    id: str
    tree: str
    manifest: FileEntry
    files: tuple[FileEntry, ...]
    created: float

    @classmethod
    def build(cls, name: str, manifest: FileEntry, files: Iterable[FileEntry]) -> Version:
        """A new version record (not yet written); checks names, paths and duplicates."""
        check_name(name)
        check_manifest_name(manifest.path)
        check_digest(manifest.digest)
        files = tuple(files)
        seen = {manifest.path}
        for f in files:
            check_relpath(f.path)
            check_digest(f.digest)
            if f.path in seen:
                raise IntegrityError(f"path appears twice in version: {f.path}", model=name)
            seen.add(f.path)
        tree = tree_digest(manifest, files)
        return cls(name, tree[:VERSION_ID_LEN], tree, manifest, files, time.time())

    @property
    def digests(self) -> set[str]:
        """Every object this version needs."""
        return {self.manifest.digest, *(f.digest for f in self.files)}

    @property
    def size(self) -> int:
        return self.manifest.size + sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.id,
            "tree": self.tree,
            "created": self.created,
            "manifest": self.manifest.to_json(),
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Version:
        manifest = FileEntry.from_json(d["manifest"])
        files = tuple(FileEntry.from_json(f) for f in d["files"])
        tree = tree_digest(manifest, files)
        if tree != d["tree"] or d["version"] != tree[:VERSION_ID_LEN]:
            raise IntegrityError("version record does not match its contents", model=d["name"])
        return cls(check_name(d["name"]), d["version"], tree, manifest, files, float(d["created"]))


class Versions:
    """Records, refs and history below a state_dir fd."""

    def __init__(self, state_fd: int) -> None:
        self._state_fd = state_fd
        for sub in ("snapshots", "refs", "history"):
            os.close(open_dir_at(state_fd, sub, create=True))

    # -- records -----------------------------------------------------------------

    def record(self, version: Version, replace: bool = False) -> None:
        """Write the version record. An existing record is left as is, unless ``replace``
        (same files, new origin metadata such as a changed ETag) or it is damaged (so
        publishing the version again heals a ref to a damaged record)."""
        fd = open_dir_at(self._state_fd, f"snapshots/{version.name}", create=True)
        try:
            if replace or not exists_at(fd, version.id + ".json") or not self._valid(version):
                data = json.dumps(version.to_json(), indent=1).encode()
                write_atomic(fd, version.id + ".json", data)
        finally:
            os.close(fd)

    def get(self, name: str, version_id: str) -> Version:
        """The recorded version; NotFoundError if there is no record, IntegrityError
        (``model``, ``file`` named) if the record does not parse or match its contents."""
        check_name(name)
        try:
            fd = open_dir_at(self._state_fd, f"snapshots/{name}")
            try:
                data = read_at(fd, _check_id(version_id) + ".json",
                               where=f"snapshots/{name}/{version_id}.json")
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise NotFoundError(f"no version {version_id}", model=name) from None
        try:
            return Version.from_json(json.loads(data))
        except IntegrityError as exc:
            raise exc.with_context(model=name, file=f"{version_id}.json") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged record (torn by a disk fault, edited by hand): JSON that does not
            # parse, a missing key, a value of the wrong type.
            raise IntegrityError(f"version record is damaged: {exc!r}", model=name,
                                 file=f"{version_id}.json") from exc

    def _valid(self, version: Version) -> bool:
        try:
            self.get(version.name, version.id)
        except (IntegrityError, UnsafePathError):
            return False
        return True

    def ids(self, name: str) -> list[str]:
        """Every recorded version id of a model."""
        return [e.removesuffix(".json")
                for e in list_at(self._state_fd, f"snapshots/{check_name(name)}")
                if e.endswith(".json") and not e.startswith(".")]

    def all(self) -> list[Version]:
        """Every recorded version of every model."""
        return [self.get(n, v) for n in self.names() for v in self.ids(n)]

    def names(self) -> list[str]:
        """Every model with a record or a ref."""
        out: set[str] = set()
        for sub in ("snapshots", "refs"):
            out.update(e for e in list_at(self._state_fd, sub) if not e.startswith("."))
        return sorted(out)

    def drop(self, name: str, version_id: str) -> None:
        """Remove a version record (pruning only)."""
        with contextlib.suppress(FileNotFoundError):
            fd = open_dir_at(self._state_fd, f"snapshots/{check_name(name)}")
            try:
                unlink_durably(fd, _check_id(version_id) + ".json")
            finally:
                os.close(fd)

    # -- refs and history --------------------------------------------------------

    def current(self, name: str) -> str | None:
        """The current version id of a model, or None if it was never published."""
        fd = open_dir_at(self._state_fd, "refs")
        try:
            return read_at(fd, check_name(name), where=f"refs/{name}").decode().strip() or None
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def set_current(self, name: str, version_id: str, *, now: float | None = None) -> None:
        """Make ``version_id`` current: the ref is replaced atomically, history updated.

        The history is written first: a crash in between leaves a history that
        already names the new version, which only makes pruning keep more.
        """
        now = time.time() if now is None else now
        hist = [h for h in self.history(name) if h["version"] != version_id]
        for h in hist:
            if h["until"] is None:
                h["until"] = now
        hist.append({"version": version_id, "from": now, "until": None})
        fd = open_dir_at(self._state_fd, "history")
        try:
            write_atomic(fd, name + ".json", json.dumps(hist[-HISTORY_LIMIT:]).encode())
        finally:
            os.close(fd)
        fd = open_dir_at(self._state_fd, "refs")
        try:
            write_atomic(fd, check_name(name), (_check_id(version_id) + "\n").encode())
        finally:
            os.close(fd)

    def history(self, name: str) -> list[dict[str, Any]]:
        """``[{"version", "from", "until"}]``, oldest first; ``until`` None = current."""
        fd = open_dir_at(self._state_fd, "history")
        try:
            return list(json.loads(read_at(fd, check_name(name) + ".json",
                                           where=f"history/{name}.json")))
        except (FileNotFoundError, ValueError):
            return []
        finally:
            os.close(fd)

    def drop_current(self, name: str) -> None:
        """Remove a model's ref and history (a ref naming a record that is gone or damaged).

        The ref goes first: a crash in between leaves only a history, which nothing
        serves and which only makes pruning keep more.
        """
        self._unlink_ref_and_history(check_name(name))

    def _unlink_ref_and_history(self, name: str) -> None:
        for sub, entry in (("refs", name), ("history", name + ".json")):
            fd = open_dir_at(self._state_fd, sub)
            try:
                unlink_durably(fd, entry)
            finally:
                os.close(fd)

    def forget(self, name: str) -> None:
        """Remove a model's ref, history and records (the model was removed for good).

        The ref goes first: a crash part-way leaves a model with no current version,
        which nothing serves or keeps.
        """
        self._unlink_ref_and_history(check_name(name))
        fd = open_dir_at(self._state_fd, "snapshots")
        try:
            rmtree_at(fd, name)
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_id(version_id: str) -> str:
    if not (len(version_id) == VERSION_ID_LEN and all(c in "0123456789abcdef" for c in version_id)):
        raise NotFoundError(f"not a version id: {version_id!r}")
    return version_id

