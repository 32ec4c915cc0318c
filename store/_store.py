"""The store: objects, partial and finished downloads, versions and the published site.

:class:`Store` is the one object the daemon and the CLI hold. It owns the order of
operations that makes a power cut harmless:

publish(version)
    1. every object the version needs is present (else NotFoundError, nothing changes)
    2. ``site/<name>/versions/<id>/`` is built under a temporary name and renamed in
    3. ``history/<name>.json`` then ``refs/<name>`` name the new version
    4. the entry point ``site/<name>/<manifest>`` is replaced by one rename
    5. versions no longer kept are removed (directory first, then the record)

A pinned model (``pins/<name>.json``, :mod:`._pins`) is held at its pinned version:
publishing another version of it records that version and notes it as waiting
instead (:meth:`Store.hold`), under the same model lock, so no sync that began
before a pin can publish over it.

A crash before 3 leaves the old version current and perhaps an unreferenced
version directory (pruned later); a crash between 3 and 4 leaves the old entry
point (a complete version) and :meth:`Store.recover`, run on every open, writes
the new one. OSErrors are translated to :class:`StorageError` here, once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from ._atomic import clean_tmp_at, exists_at, list_at
from ._downloads import Download, Downloads
from ._errors import (
    IntegrityError,
    LockedError,
    NotFoundError,
    ShardsyncError,
    UnsafePathError,
    translate_oserror,
)
from ._gc import GcReport, StoreStats, collect, count
from ._ingest import Ingest, IngestStatus, ingest_ref, statuses
from ._objects import CHUNK, Objects
from ._paths import VERSIONS_DIR, check_name, open_dir, open_dir_at
from ._pins import Pin, Pins
from ._site import Site
from ._trust import TrustRecords
from ._verify import Problem, Verifier
from ._versions import FileEntry, Version, Versions

__all__ = ["GRACE_SECONDS", "EntryPoint", "Store"]

#: A version that stopped being current less than this long ago is never removed: a
#: page that read the old entry point may still be fetching its shards (a slow kiosk
#: on a busy CPU takes seconds; five minutes leaves a wide margin).
GRACE_SECONDS = 300.0

#: Renders an entry point: (the origin's manifest bytes, "versions/<id>/") -> its bytes.
EntryPoint = Callable[[bytes, str], bytes]

log = logging.getLogger(__name__)


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

    ``entry_point`` renders a version's entry point: given the origin's manifest bytes
    and the prefix ``versions/<id>/``, the bytes a page loads. The store knows no model
    format; the daemon passes ``shardsync.daemon.entrypoint.rewrite_paths``. It has no
    default on purpose: :meth:`recover` and ``verify(repair=True)`` rewrite every entry
    point that differs from what it renders, so a store opened with a wrong default
    would "repair" every published model into a broken one.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        site_dir: str | os.PathLike[str],
        *,
        entry_point: EntryPoint,
        keep_versions: int = 2,
        grace: float = GRACE_SECONDS,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        self.state_dir = os.path.abspath(state_dir)
        self.keep_versions = keep_versions
        self.grace = grace
        self._entry_point = entry_point
        with translate_oserror("cannot open the store", file=self.state_dir):
            self._fd = open_dir(self.state_dir, create=True)
            self._lock_fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                                    dir_fd=self._fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self.objects = Objects(self._fd, self.state_dir)
            self._partial_fd = open_dir_at(self._fd, "partial", create=True)
            self._locks_fd = open_dir_at(self._fd, "locks", create=True)
            self._downloads_fd = open_dir_at(self._fd, "downloads", create=True)
            self.downloads = Downloads(self._downloads_fd)
            self.versions = Versions(self._fd)
            self._trust_fd = open_dir_at(self._fd, "trust", create=True)
            self.trust = TrustRecords(self._trust_fd)
            self._pins_fd = open_dir_at(self._fd, "pins", create=True)
            self.pins = Pins(self._pins_fd)
            self.site = Site(site_dir)
        self.recover()

    def close(self) -> None:
        for closer in (self.objects.close, self.site.close):
            closer()
        for fd in (self._partial_fd, self._locks_fd, self._downloads_fd, self._trust_fd,
                   self._pins_fd, self._lock_fd, self._fd):
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

    def open_ingest(self, url: str, *, source: str | None = None) -> Ingest:
        """The partial download of ``url`` (resumed if one exists); LockedError if busy.

        A crash or cancel leaves the partial on disk for the next open; see
        :mod:`shardsync.store._ingest` for how much of it is trusted. Its commit leaves
        a download record (:meth:`downloaded`) naming ``source``, the manifest URL of
        the model that wants the file, which :meth:`prune_downloads` goes by.
        """
        with translate_oserror("cannot open partial download", file=url):
            return Ingest(self.objects, self._partial_fd, url, downloads=self.downloads,
                          source=source)

    def has_ingest(self, url: str) -> bool:
        """Whether a partial download of ``url`` is on disk (one stat, no parsing)."""
        return exists_at(self._partial_fd, ingest_ref(url) + ".json") or exists_at(
            self._partial_fd, ingest_ref(url) + ".data")

    def ingests(self) -> list[IngestStatus]:
        """Every partial download on disk."""
        return statuses(self._partial_fd)

    # -- download records ----------------------------------------------------------

    def downloaded(self) -> list[Download]:
        """Every file stored by a download that no recorded version holds yet (or that
        :meth:`forget_downloads` was not told about): what an interrupted sync finished."""
        with translate_oserror("cannot read download records", file="downloads"):
            return self.downloads.all()

    def forget_downloads(self, urls: Iterable[str]) -> None:
        """Drop the download records of ``urls``: a recorded version now holds them."""
        with translate_oserror("cannot remove download records", file="downloads"):
            self.downloads.forget(ingest_ref(u) for u in urls)

    def prune_downloads(self, sources: Collection[str]) -> int:
        """Drop the download records whose source (manifest URL) is not in ``sources``
        (their model left the config) and damaged ones; return how many."""
        with translate_oserror("cannot remove download records", file="downloads"):
            return self.downloads.prune(sources)

    # -- trust records -------------------------------------------------------------

    def trust_record(self, name: str) -> dict[str, Any] | None:
        """What was last accepted about model ``name``'s signature (``trust/<name>.json``),
        or None. The store does not interpret it; IntegrityError if it is damaged (a lost
        record would let a rollback through, so it is never treated as absent)."""
        with translate_oserror("cannot read the trust record", model=name):
            return self.trust.get(name)

    def set_trust_record(self, name: str, record: Mapping[str, Any]) -> None:
        """Replace the trust record of model ``name`` durably (temp, fsync, rename, fsync
        the directory): a crash leaves the old record or the new one. It outlives the
        model's removal from the config, so a config edit cannot undo a rollback check."""
        with translate_oserror("cannot write the trust record", model=name):
            self.trust.set(name, record)

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
            return count(self.objects, self.versions)

    def kept(self, name: str, *, now: float | None = None) -> list[str]:
        """Version ids to keep: the current one, the newest ``keep_versions`` overall,
        and any that stopped being current less than ``grace`` seconds ago, newest first;
        then a pin's version and the version it holds back, if not among them (the one
        must stay publishable, the other lets an unpin publish without the network).
        A damaged pin raises IntegrityError: pruning then removes nothing."""
        keep = self._kept_history(name, now=now)
        pin = self.pins.get(name)
        for vid in (pin.version, pin.waiting) if pin else ():
            if vid and vid not in keep:
                keep.append(vid)
        return keep

    def _kept_history(self, name: str, *, now: float | None = None) -> list[str]:
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
        return self._entry_point(manifest, f"{VERSIONS_DIR}/{version.id}/")

    def publish(self, version: Version, *, now: float | None = None) -> bool:
        """Make ``version`` current (see the module docstring for the order of steps);
        True if it did, False if the model is pinned to another version (then
        ``version`` is recorded and held back, as :meth:`hold` does).

        On any error before the entry point names it, the previous version stays
        published and current. Once it does, the version is published: a failure of the
        clean-up after (the old entry point, pruning) is logged, not raised, and tried
        again by the next publish or :meth:`prune`.
        """
        name = version.name
        self._require_objects(version)
        with translate_oserror("cannot publish", model=name), self._model_lock(name):
            pin = self.pins.get(name)
            if pin is not None and pin.version != version.id:
                self._hold(version, pin, now=now)
                return False
            self._publish(version, now=now)
            return True

    def _publish(self, version: Version, *, now: float | None) -> None:
        name = version.name
        # Under the model lock; OSErrors are translated by the caller.
        previous = self.current(name)
        self.versions.record(version)
        entry = self.entry_bytes(version)
        self.site.build_version(version, self.objects)
        self.site.fill(version, self.objects)
        self.versions.set_current(name, version.id, now=now)
        self.site.write_entry(name, version.manifest.path, entry)
        try:
            with translate_oserror("cannot remove the old entry point", model=name):
                if previous and previous.manifest.path != version.manifest.path:
                    self.site.remove_entry(name, previous.manifest.path)
            self._prune(name, now=now)
        except ShardsyncError as exc:
            # The version is published (the entry point names it): what failed is
            # clean-up, which the next publish or prune tries again. Raising would
            # report a published version as a failed sync (issue 13).
            log.warning("model %s: published version %s, but %s", name, version.id, exc)

    # -- pins ----------------------------------------------------------------------

    def pinned(self, name: str) -> Pin | None:
        """The pin of model ``name`` (``pins/<name>.json``), or None. IntegrityError if
        it is damaged: a lost pin would let a sync publish over a rollback."""
        with translate_oserror("cannot read the pin", model=name):
            return self.pins.get(name)

    def pin(self, name: str, version_id: str | None = None, *,
            now: float | None = None) -> Pin:
        """Hold model ``name`` at ``version_id`` (default: the current one); return the pin.

        A kept version that is not current is made current again (published, as
        :meth:`publish` does, its directory reused if it is still there); a version
        not kept is refused with a NotFoundError listing the kept ones. The pin is
        written, durably, before that publish: a crash in between leaves a pin whose
        version :meth:`recover` publishes on the next open, never an unpinned model
        that the next sync would move on. A version held back stays held back.
        """
        check_name(name)
        now = time.time() if now is None else now
        with translate_oserror("cannot pin", model=name), self._model_lock(name):
            current = self.versions.current(name)
            vid = version_id or current
            if vid is None:
                raise NotFoundError("no version is published, so there is none to pin",
                                    model=name)
            version = self._kept_version(name, vid, now=now)
            old = self.pins.get(name)
            pin = Pin(vid, old.since if old and old.version == vid else now,
                      old.waiting if old and old.waiting != vid else None)
            if pin != old:
                self.pins.set(name, pin)
            if vid != current:
                self._require_objects(version)
                self._publish(version, now=now)
            return pin

    def rollback(self, name: str, version_id: str | None = None, *,
                 now: float | None = None) -> Pin:
        """Make a kept version of ``name`` current again and pin it (:meth:`pin`); by
        default the newest version that was current before the current one.
        NotFoundError when there is none, or ``version_id`` is not kept."""
        check_name(name)
        if version_id is None:
            with translate_oserror("cannot read the history", model=name):
                current = self.versions.current(name)
                kept = self._kept_history(name, now=now)
            earlier = [v for v in kept if v != current]
            if not earlier:
                raise NotFoundError("no earlier version is kept to roll back to "
                                    f"(kept: {', '.join(kept) or 'none'})", model=name)
            version_id = earlier[0]
        return self.pin(name, version_id, now=now)

    def unpin(self, name: str, *, now: float | None = None) -> Pin | None:
        """Let updates of ``name`` through again; return the pin that was removed (None
        if there was none).

        The version the pin held back, recorded and verified when the origin offered
        it, is published at once: the update the operator let through, without the
        network (the next sync publishes whatever the origin offers by then). The pin
        goes first: a crash in between leaves an unpinned model whose next sync
        publishes; a held-back version that cannot be published (its record or objects
        gone) is logged and left to that sync too.
        """
        check_name(name)
        with translate_oserror("cannot unpin", model=name), self._model_lock(name):
            try:
                old = self.pins.get(name)
            except IntegrityError:
                old = None  # a damaged pin: removing it is what the message asks for
            self.pins.drop(name)
            if old is not None and old.waiting is not None:
                try:
                    version = self.versions.get(name, old.waiting)
                    self._require_objects(version)
                    self._publish(version, now=now)
                except ShardsyncError as exc:
                    log.warning("model %s: unpinned, but the version it held back is not "
                                "published (the next sync publishes): %s", name, exc)
            return old

    def hold(self, version: Version, *, now: float | None = None) -> bool:
        """Note that the origin offers ``version`` of a pinned model: recorded and kept
        as the pin's ``waiting`` (the pinned version itself: nothing is waiting). False,
        changing nothing, if the model is not pinned."""
        name = version.name
        with translate_oserror("cannot hold back", model=name), self._model_lock(name):
            pin = self.pins.get(name)
            if pin is None:
                return False
            self._hold(version, pin, now=now)
            return True

    def _hold(self, version: Version, pin: Pin, *, now: float | None) -> None:
        waiting = None if version.id == pin.version else version.id
        if waiting is not None:
            self.versions.record(version)
        if pin.waiting != waiting:
            self.pins.set(version.name, replace(pin, waiting=waiting))
            try:
                self._prune(version.name, now=now)  # the version waiting before
            except ShardsyncError as exc:
                log.warning("model %s: %s", version.name, exc)

    def _kept_version(self, name: str, vid: str, *, now: float | None) -> Version:
        kept = self.kept(name, now=now)
        if vid in kept:
            with contextlib.suppress(NotFoundError, IntegrityError):
                return self.versions.get(name, vid)
        raise NotFoundError(f"version {vid} is not kept (kept: {', '.join(kept) or 'none'})",
                            model=name)

    def prune(self, name: str, *, now: float | None = None) -> list[str]:
        """Remove versions of ``name`` that are no longer kept; return their ids."""
        with translate_oserror("cannot remove old version", model=name), \
                self._model_lock(name):
            return self._prune(name, now=now)

    def _prune(self, name: str, *, now: float | None) -> list[str]:
        keep = set(self.kept(name, now=now))
        gone = (set(self.site.version_ids(name)) | set(self.versions.ids(name))) - keep
        for vid in sorted(gone):
            with translate_oserror(f"cannot remove old version {vid}", model=name):
                self.site.remove_version(name, vid)  # directory first: gc then keeps objects
                self.versions.drop(name, vid)
        return sorted(gone)

    def put_site_file(self, name: str, data: bytes) -> bool:
        """Publish ``data`` as ``site_dir/<name>``, beside the models; return whether it wrote.

        For files the pages need that belong to no model (the daemon's page script).
        ``name`` is one file name by the model-name rule, and must not be a model's:
        a model directory in the way raises StorageError. The file is replaced by one
        atomic rename (a crash leaves the old bytes or the new), mode 0644 whatever
        the umask, and not rewritten when it already holds ``data``.
        """
        with translate_oserror("cannot publish site file", file=name):
            return self.site.write_root_file(name, data)

    def remove_model(self, name: str) -> None:
        """Unpublish a model entirely: its site directory, ref, history and records."""
        check_name(name)
        with translate_oserror("cannot remove model", model=name), self._model_lock(name):
            self.site.remove_model(name)
            self.versions.forget(name)
            self.pins.drop(name)

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
        pin = self.pins.get(name)
        if pin is not None and pin.version != self.versions.current(name):
            # A crash inside pin(), between the pin and its publish: finish it.
            self._publish(self.versions.get(name, pin.version), now=None)
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
        dirs = ["partial", "downloads", "refs", "history", "snapshots", "trust", "pins"]
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

    def gc(self, *, dry_run: bool = False, min_age: float = 0.0,
           sources: Collection[str] | None = None) -> GcReport:
        """Remove objects no recorded version references, and orphaned partial files.

        Objects a download record names are kept (an interrupted sync's finished
        files); with ``sources`` (the configured manifest URLs), the records of any
        other source are dropped first, as :meth:`prune_downloads` does.

        Needs the store to itself (LockedError otherwise). Partial downloads with a
        sidecar are kept: they are the resume points of interrupted downloads.
        Objects written less than ``min_age`` seconds ago are kept (and counted as
        kept) even if unreferenced: a sync that failed part-way stored them for its
        next attempt, which would otherwise fetch them again.
        """
        if min_age < 0:
            raise ValueError(f"min_age must not be negative, not {min_age}")
        with self._exclusive(), translate_oserror("gc failed", file=self.state_dir):
            return collect(self.objects, self.versions, self.downloads, self._partial_fd,
                           dry_run=dry_run, min_age=min_age, sources=sources)

    def verify(self, *, repair: bool = False) -> list[Problem]:
        """Re-hash every object and check every published file and entry point.

        With ``repair``: corrupt objects are deleted (a sync fetches them again),
        published files or entry points that differ are put back from good objects, a
        ref naming a missing or damaged record is dropped with the model's history (the
        next sync publishes again), and a damaged record of another version is dropped.
        """
        with translate_oserror("verify failed", file=self.state_dir):
            return Verifier(self.objects, self.versions, self.site, self.entry_bytes
                            ).run(repair=repair)
