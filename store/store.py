"""The store: objects, partial downloads, versions and the published site, together.

:class:`Store` is the one object the daemon and the CLI hold. It owns the order of
operations that makes a power cut harmless:

publish(version)
    1. every object the version needs is present (else NotFoundError, nothing changes)
    2. ``site/<name>/versions/<id>/`` is built under a temporary name and renamed in
    3. ``history/<name>.json`` then ``refs/<name>`` name the new version
    4. the entry point ``site/<name>/<manifest>`` is replaced by one rename
    5. versions no longer kept are removed (directory first, then the record)

A crash before 3 leaves the old version current and perhaps an unreferenced
version directory (pruned later); a crash between 3 and 4 leaves the old entry
point (a complete version) and :meth:`Store.recover`, run on every open, writes
the new one. OSErrors are translated to :class:`StorageError` here, once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .atomic import clean_tmp_at, exists_at, list_at, tmp_name, unlink_durably
from .entry import rewrite_paths
from .errors import (
    IntegrityError,
    LockedError,
    NotFoundError,
    ShardsyncError,
    UnsafePathError,
    translate_oserror,
)
from .ingest import Ingest, IngestStatus, ingest_ref, read_status
from .objects import CHUNK, Objects, hash_file
from .paths import VERSIONS_DIR, check_name, open_dir, open_dir_at
from .site import Site
from .versions import FileEntry, Version, Versions

__all__ = ["GRACE_SECONDS", "GcReport", "Problem", "Store", "StoreStats"]

#: A version that stopped being current less than this long ago is never removed: a
#: page that read the old entry point may still be fetching its shards (a slow kiosk
#: on a busy CPU takes seconds; five minutes leaves a wide margin).
GRACE_SECONDS = 300.0

log = logging.getLogger(__name__)

# What verify says of a published file; repair tests for these exact values.
_MISSING = "published file is missing"
_UNSAFE = "a directory on its path is a symlink or not a directory; not following it"
_NOT_REGULAR = "published file is not a regular file"


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


@dataclass(frozen=True)
class Problem:
    """One thing verify found wrong; ``str()`` says it in one line."""

    # object-corrupt | object-missing | file-missing | file-differs | entry-differs
    # | ref-dangling | record-damaged
    kind: str
    detail: str
    model: str | None = None
    version: str | None = None
    path: str | None = None
    repaired: bool = False

    def __str__(self) -> str:
        where = " ".join(
            x for x in (
                f"model {self.model}" if self.model else "",
                f"version {self.version}" if self.version else "",
                f"file {self.path}" if self.path else "",
            ) if x
        )
        fixed = " (repaired)" if self.repaired else ""
        return f"{self.kind}: {where + ': ' if where else ''}{self.detail}{fixed}"


class Store:
    """A content-addressed store under ``state_dir`` publishing into ``site_dir``.

    Opening takes a shared lock on ``state_dir/lock`` (gc needs it exclusively),
    removes temporary files a crash left, and runs :meth:`recover`.

    Changes to one model (publish, prune, remove_model, update_record, and recover's
    repairs) hold an exclusive flock on ``state_dir/locks/<name>``, waiting for it:
    two publishes of one model, from threads of one process or from two processes,
    run one after the other, so a prune never removes the version the other is about
    to make current. Lock files stay (removing one would let a waiter and a newcomer
    lock different files).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        site_dir: str | os.PathLike[str],
        *,
        keep_versions: int = 2,
        grace: float = GRACE_SECONDS,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        self.state_dir = os.path.abspath(state_dir)
        self.keep_versions = keep_versions
        self.grace = grace
        with translate_oserror("cannot open the store", file=self.state_dir):
            self._fd = open_dir(self.state_dir, create=True)
            self._lock_fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                                    dir_fd=self._fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self.objects = Objects(self._fd, self.state_dir)
            self._partial_fd = open_dir_at(self._fd, "partial", create=True)
            self._locks_fd = open_dir_at(self._fd, "locks", create=True)
            self.versions = Versions(self._fd)
            self.site = Site(site_dir)
        self.recover()

    def close(self) -> None:
        for closer in (self.objects.close, self.site.close):
            closer()
        for fd in (self._partial_fd, self._locks_fd, self._lock_fd, self._fd):
            os.close(fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects and ingests -----------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        with translate_oserror("cannot store object"):
            return self.objects.put_bytes(data)

    def put_file(self, path: str | os.PathLike[str]) -> str:
        with translate_oserror("cannot store file", file=os.fspath(path)):
            return self.objects.put_file(path)

    def open_ingest(self, url: str) -> Ingest:
        """The partial download of ``url`` (resumed if one exists); LockedError if busy.

        A crash or cancel leaves the partial on disk for the next open; see
        :mod:`shardsync.store.ingest` for how much of it is trusted.
        """
        with translate_oserror("cannot open partial download", file=url):
            return Ingest(self.objects, self._partial_fd, url)

    def has_ingest(self, url: str) -> bool:
        """Whether a partial download of ``url`` is on disk (one stat, no parsing)."""
        return exists_at(self._partial_fd, ingest_ref(url) + ".json") or exists_at(
            self._partial_fd, ingest_ref(url) + ".data")

    def ingests(self) -> list[IngestStatus]:
        """Every partial download on disk."""
        out = []
        for name in sorted(os.listdir(self._partial_fd)):
            if name.endswith(".json") and not name.startswith("."):
                st = read_status(self._partial_fd, name)
                if st is not None:
                    out.append(st)
        return out

    # -- versions ----------------------------------------------------------------

    def record(self, name: str, manifest: FileEntry, files: Iterable[FileEntry]) -> Version:
        """Build and durably record a version (not yet published). Idempotent."""
        version = Version.build(name, manifest, files)
        self._require_objects(version)
        with translate_oserror("cannot record version", model=name):
            self.versions.record(version)
        return version

    def update_record(self, version: Version) -> None:
        """Rewrite the record of ``version`` (same files, new origin metadata such as a
        changed ETag); atomic, so a crash leaves the old record or the new one."""
        with translate_oserror("cannot update version record", model=version.name), \
                self._model_lock(version.name):
            self.versions.record(version, True)

    @contextlib.contextmanager
    def _model_lock(self, name: str) -> Iterator[None]:
        """Hold the exclusive lock of model ``name`` (blocking; see the class docstring).

        flock belongs to the open file description, so each holder opens the file
        itself: two threads of one process exclude each other like two processes.
        Not reentrant: a holder calls only the unlocked ``_`` methods.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(check_name(name), flags, 0o600, dir_fd=self._locks_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_object(self, digest: str, *, model: str | None = None) -> bytes:
        """A whole object, checked to still hash to its name (IntegrityError if not).

        An OSError (EIO, a planted non-file...) becomes a StorageError naming the
        object and, when given, the model it was read for. Reading changes nothing.
        """
        where = {"model": model} if model else {}
        with translate_oserror("cannot read object", file=digest, **where):
            return self.objects.read_verified(digest)

    def current(self, name: str) -> Version | None:
        """The published version of a model, or None.

        A ref naming a record that is missing or damaged counts as no current version
        (logged as a warning): the next sync publishes again and so heals it, where
        raising would fail that model's every sync. :meth:`verify` reports it.
        """
        with translate_oserror("cannot read the current version", model=name):
            vid = self.versions.current(name)
            if not vid:
                return None
            try:
                return self.versions.get(name, vid)
            except (NotFoundError, IntegrityError, UnsafePathError) as exc:
                log.warning("model %s: ref names version %s, whose record is unusable (%s); "
                            "treating the model as unpublished", name, vid, exc)
                return None

    def has_object(self, digest: str) -> bool:
        """Whether the store holds object ``digest`` (a stat; its bytes are not checked)."""
        with translate_oserror("cannot look up object", file=digest):
            return self.objects.has(digest)

    def iter_object(self, digest: str, *, model: str | None = None) -> Iterator[bytes]:
        """The bytes of object ``digest`` in blocks of at most CHUNK, as stored (not
        re-hashed: see :meth:`read_object`). NotFoundError if there is none."""
        where = {"model": model} if model else {}
        with translate_oserror("cannot read object", file=digest, **where), \
                self.objects.open(digest) as f:
            while block := f.read(CHUNK):
                yield block

    def model_names(self) -> list[str]:
        """Every model the store has a record or a ref of."""
        with translate_oserror("cannot list models", file=self.state_dir):
            return self.versions.names()

    def current_id(self, name: str) -> str | None:
        """The id of the current version of a model (the ref alone), or None."""
        with translate_oserror("cannot read the current version", model=name):
            return self.versions.current(name)

    def history(self, name: str) -> list[dict[str, Any]]:
        """``[{"version", "from", "until"}]`` of a model, oldest first (``until`` None:
        current); versions pruned since may be named."""
        with translate_oserror("cannot read the history", model=name):
            return self.versions.history(name)

    def version(self, name: str, version_id: str) -> Version:
        """A recorded version; NotFoundError if there is no record (pruned), IntegrityError
        if it is damaged."""
        with translate_oserror("cannot read version record", model=name, file=version_id):
            return self.versions.get(name, version_id)

    def stats(self) -> StoreStats:
        """Count the objects and their bytes, and what the records reference beyond them
        (a walk of every object and record: not cheap)."""
        with translate_oserror("cannot compute store statistics", file=self.state_dir):
            sizes = {o.digest: o.size for o in self.objects.walk()}
            referenced = 0
            unique: set[str] = set()
            for v in self.versions.all():
                for e in (v.manifest, *v.files):
                    referenced += e.size
                    unique.add(e.digest)
        return StoreStats(objects=len(sizes), bytes=sum(sizes.values()),
                          saved=max(0, referenced - sum(sizes.get(d, 0) for d in unique)))

    def kept(self, name: str, *, now: float | None = None) -> list[str]:
        """Version ids to keep: the current one, the newest ``keep_versions`` overall,
        and any that stopped being current less than ``grace`` seconds ago. Newest first."""
        now = time.time() if now is None else now
        hist = sorted(self.versions.history(name), key=lambda h: h["from"], reverse=True)
        keep: list[str] = []
        for i, h in enumerate(hist):
            recent = h["until"] is None or h["until"] > now - self.grace
            if i < self.keep_versions or recent:
                keep.append(h["version"])
        cur = self.versions.current(name)
        if cur and cur not in keep:
            keep.insert(0, cur)
        return keep

    def entry_bytes(self, version: Version) -> bytes:
        """The entry point of a version: its manifest with paths under ``versions/<id>/``."""
        manifest = self.objects.read_verified(version.manifest.digest)
        return rewrite_paths(manifest, f"{VERSIONS_DIR}/{version.id}/")

    def publish(self, version: Version, *, now: float | None = None) -> None:
        """Make ``version`` current (see the module docstring for the order of steps).

        On any error the previous version stays published and current.
        """
        name = version.name
        self._require_objects(version)
        with translate_oserror("cannot publish", model=name), self._model_lock(name):
            previous = self.current(name)
            self.versions.record(version)
            entry = self.entry_bytes(version)
            self.site.build_version(version, self.objects)
            self._fill(version)
            self.versions.set_current(name, version.id, now=now)
            self.site.write_entry(name, version.manifest.path, entry)
            if previous and previous.manifest.path != version.manifest.path:
                self.site.remove_entry(name, previous.manifest.path)
            self._prune(name, now=now)

    def prune(self, name: str, *, now: float | None = None) -> list[str]:
        """Remove versions of ``name`` that are no longer kept; return their ids."""
        with translate_oserror("cannot remove old version", model=name), \
                self._model_lock(name):
            return self._prune(name, now=now)

    def _prune(self, name: str, *, now: float | None) -> list[str]:
        keep = set(self.kept(name, now=now))
        gone = (set(self.site.version_ids(name)) | set(self.versions.ids(name))) - keep
        with translate_oserror("cannot remove old version", model=name):
            for vid in sorted(gone):
                self.site.remove_version(name, vid)  # directory first: gc then keeps objects
                self.versions.drop(name, vid)
        return sorted(gone)

    def remove_model(self, name: str) -> None:
        """Unpublish a model entirely: its site directory, ref, history and records."""
        check_name(name)
        with translate_oserror("cannot remove model", model=name), self._model_lock(name):
            self.site.remove_model(name)
            self.versions.forget(name)

    def recover(self) -> None:
        """Finish what a crash interrupted: temporaries of dead writers go, and every
        current version's directory and entry point exist and match (an entry point of
        an older manifest name goes). Problems are left for verify, not raised."""
        self._clean_temporaries()
        for name in self.versions.names():
            try:
                with self._model_lock(name):
                    self._recover_model(name)
            except (ShardsyncError, OSError):
                continue  # verify reports it; opening the store must not fail on one model

    def _recover_model(self, name: str) -> None:
        version = self.current(name)
        if version is None:
            return
        self.site.build_version(version, self.objects)
        entry = self.entry_bytes(version)
        if self.site.read_entry(name, version.manifest.path) != entry:
            self.site.write_entry(name, version.manifest.path, entry)
        for stale in self.site.entries(name):
            if stale != version.manifest.path:
                self.site.remove_entry(name, stale)

    def _clean_temporaries(self) -> None:
        """Remove ``.tmp-*`` names left by writers that died, in every directory we write."""
        dirs = ["partial", "refs", "history", "snapshots"]
        with contextlib.suppress(OSError, ShardsyncError):  # best effort, like clean_tmp_at
            dirs += [f"snapshots/{n}" for n in list_at(self._fd, "snapshots")
                     if not n.startswith(".")]
        for rel in dirs:
            clean_tmp_at(self._fd, rel)
        self.site.clean_temporaries()

    def _require_objects(self, version: Version) -> None:
        for entry in (version.manifest, *version.files):
            if not self.objects.has(entry.digest):
                raise NotFoundError(
                    "object missing from the store", model=version.name, file=entry.path,
                    expected=entry.digest, actual=None,
                )

    # -- maintenance -------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # a failed conversion may drop ours
            raise LockedError(
                "the store is in use by another process (is the service running? "
                "it runs gc itself)", file=self.state_dir,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def gc(self, *, dry_run: bool = False, min_age: float = 0.0) -> GcReport:
        """Remove objects no recorded version references, and orphaned partial files.

        Needs the store to itself (LockedError otherwise). Partial downloads with a
        sidecar are kept: they are the resume points of interrupted downloads.
        Objects written less than ``min_age`` seconds ago are kept (and counted as
        kept) even if unreferenced: a sync that failed part-way stored them for its
        next attempt, which would otherwise fetch them again.
        """
        if min_age < 0:
            raise ValueError(f"min_age must not be negative, not {min_age}")
        report = GcReport()
        young_since = time.time() - min_age
        with self._exclusive(), translate_oserror("gc failed", file=self.state_dir):
            referenced: set[str] = set()
            for version in self.versions.all():
                referenced |= version.digests
            for info in list(self.objects.walk()):
                if info.digest in referenced or (min_age and info.mtime > young_since):
                    report.objects_kept += 1
                    continue
                report.objects_removed += 1
                report.bytes_freed += info.size
                report.removed.append(info.digest)
                if not dry_run:
                    self.objects.delete(info.digest)
            names = set(os.listdir(self._partial_fd))
            for name in sorted(names):
                stem, _, ext = name.rpartition(".")
                other = stem + (".json" if ext == "data" else ".data")
                if ext in ("data", "json") and other not in names:
                    report.partials_removed += 1
                    if not dry_run:
                        os.unlink(name, dir_fd=self._partial_fd)
        return report

    def verify(self, *, repair: bool = False) -> list[Problem]:
        """Re-hash every object and check every published file and entry point.

        With ``repair``: corrupt objects are deleted (a sync fetches them again),
        published files or entry points that differ are put back from good objects, a
        ref naming a missing or damaged record is dropped with the model's history (the
        next sync publishes again), and a damaged record of another version is dropped.
        """
        problems: list[Problem] = []
        bad: set[str] = set()
        with translate_oserror("verify failed", file=self.state_dir):
            for info in list(self.objects.walk()):
                actual = self.objects.verify(info.digest)
                if actual != info.digest:
                    bad.add(info.digest)
                    if repair:
                        self.objects.delete(info.digest)
                    problems.append(Problem(
                        "object-corrupt", f"content hashes to {actual}", path=info.digest,
                        repaired=repair,  # deleted: a version needing it reports object-missing
                    ))
            for version in self._records(problems, repair):
                problems += self._verify_version(version, bad, repair)
        return problems

    def _records(self, problems: list[Problem], repair: bool) -> list[Version]:
        """Every usable version record; refs to missing or damaged records and damaged
        records are appended to ``problems`` (and dropped with ``repair``)."""
        out = []
        for name in self.versions.names():
            current = self.versions.current(name)
            ids = self.versions.ids(name)
            for vid in ids:
                try:
                    out.append(self.versions.get(name, vid))
                except NotFoundError:
                    continue  # removed meanwhile, or a stray file not named like an id
                except (IntegrityError, UnsafePathError) as exc:
                    if vid == current:
                        continue  # reported as the dangling ref below
                    if repair:
                        self.versions.drop(name, vid)
                    problems.append(Problem("record-damaged", str(exc), model=name,
                                            version=vid, repaired=repair))
            if current is not None and current not in {v.id for v in out if v.name == name}:
                why = "names a damaged record" if current in ids else "names no record"
                if repair:
                    self.versions.drop_current(name)
                    if current in ids:
                        self.versions.drop(name, current)
                problems.append(Problem("ref-dangling", f"the current version {why}",
                                        model=name, version=current, repaired=repair))
        return out

    def _verify_version(self, version: Version, bad: set[str], repair: bool) -> list[Problem]:
        out: list[Problem] = []
        where = {"model": version.name, "version": version.id}
        published = (version.id in self.site.version_ids(version.name)
                     or self.versions.current(version.name) == version.id)
        for entry in (version.manifest, *version.files):
            if entry.digest in bad or not self.objects.has(entry.digest):
                out.append(Problem("object-missing", f"needs object {entry.digest}",
                                   path=entry.path, **where))
                why = self._check_published(version, entry, rehash=True) if published else None
                if why is not None and why != _MISSING:
                    # The bad object's bytes are served (a hardlink shares them): a 404
                    # fails loudly in the page, rotten weights would not.
                    fixed = repair and why != _UNSAFE
                    if fixed:
                        self._unlink_published(version, entry)
                    out.append(Problem("file-differs", f"published file: {why}",
                                       path=entry.path, repaired=fixed, **where))
                continue
            if not published:
                continue  # recorded, never published: no files to check
            why = self._check_published(version, entry)
            if why is None:
                continue
            fixed = False
            if repair and why != _UNSAFE:  # never write below a planted symlink
                self._replace_published(version, entry)
                fixed = True
            out.append(Problem("file-differs" if why != _MISSING else "file-missing", why,
                               path=entry.path, repaired=fixed, **where))
        if self.versions.current(version.name) == version.id and not out:
            want = self.entry_bytes(version)
            if self.site.read_entry(version.name, version.manifest.path) != want:
                if repair:
                    self.site.write_entry(version.name, version.manifest.path, want)
                out.append(Problem("entry-differs", "entry point does not match the version",
                                   path=version.manifest.path, repaired=repair, **where))
        return out

    def _published_dir(self, version: Version, relpath: str) -> tuple[int, str]:
        """(fd of the directory holding published file ``relpath``, its base name).

        Walked from the site fd with O_NOFOLLOW: FileNotFoundError if a directory is
        missing, UnsafePathError if one is a symlink or not a directory. The caller
        closes the fd.
        """
        parent, _, base = relpath.rpartition("/")
        rel = f"{VERSIONS_DIR}/{version.id}" + (f"/{parent}" if parent else "")
        mfd = self.site.model_dir(version.name)
        try:
            return open_dir_at(mfd, rel), base
        finally:
            os.close(mfd)

    def _check_published(self, version: Version, entry: FileEntry, *, rehash: bool = False
                         ) -> str | None:
        """Why the published file of ``entry`` is not its bytes, or None if it is.

        A hardlink of the (just verified) object is not re-hashed unless ``rehash``.
        Nothing but a regular file below real directories is ever opened (a FIFO would
        block a read, a symlink lead outside site_dir).
        """
        try:
            dfd, base = self._published_dir(version, entry.path)
        except FileNotFoundError:
            return _MISSING
        except UnsafePathError:
            return _UNSAFE
        try:
            try:
                st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return _MISSING
            if not stat.S_ISREG(st.st_mode):
                return _NOT_REGULAR
            if st.st_size != entry.size:
                return f"size is {st.st_size}, expected {entry.size}"
            if not rehash:
                obj = self.objects.stat(entry.digest)
                if (st.st_dev, st.st_ino) == (obj.st_dev, obj.st_ino):
                    return None  # the object itself, hardlinked, and the object was verified
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(base, flags, dir_fd=dfd)
            except FileNotFoundError:
                return _MISSING
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # became a symlink since the stat
                    return _NOT_REGULAR
                raise
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return _NOT_REGULAR  # swapped since the stat
                actual = hash_file(f)
        finally:
            os.close(dfd)
        if actual != entry.digest:
            return f"content hashes to {actual}, expected {entry.digest}"
        return None

    def _unlink_published(self, version: Version, entry: FileEntry) -> None:
        """Remove one published file (its directory walked without following symlinks)."""
        try:
            dfd, base = self._published_dir(version, entry.path)
        except FileNotFoundError:
            return
        try:
            unlink_durably(dfd, base)
        finally:
            os.close(dfd)

    def _fill(self, version: Version) -> None:
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
            self._replace_published(version, entry)

    def _replace_published(self, version: Version, entry: FileEntry) -> None:
        """Put one published file back from its object: placed under a temp name, renamed."""
        parent, _, base = entry.path.rpartition("/")
        rel = f"{VERSIONS_DIR}/{version.id}" + (f"/{parent}" if parent else "")
        mfd = self.site.model_dir(version.name)
        try:
            dfd = open_dir_at(mfd, rel, create=True)
        finally:
            os.close(mfd)
        try:
            tmp = tmp_name(base)
            try:
                self.site.place(self.objects, entry.digest, dfd, tmp)
                os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                # clean_tmp spares our own pid's temporaries: remove it here
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)
        finally:
            os.close(dfd)
