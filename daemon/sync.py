"""The sync of one model: manifest → plan → fetch what is missing → verify → publish.

A :class:`Syncer` is shared by every model of a run (the CLI's one pass, or the
service): it holds the one store, the one fetcher, the download limit and the
table of downloads in flight, so that a shard two models share is fetched once,
also when both sync at the same time.

What one :meth:`Syncer.sync` does:

1. GET the manifest, conditionally with the validators of the current version
   (a 304 reuses the manifest the store holds), and parse it (:mod:`.tfjs`).
2. For every shard, ask the origin, conditionally when the store already holds a
   file from that canonical URL (a 304 reuses it, costing no body); otherwise
   download it, resuming any partial. Each file is hashed while it streams.
3. Check every weight group's bytes against the manifest (TF.js never does).
4. Record the version (the tree digest) and, if it differs from the current one,
   publish it.

On any failure the current version stays published, partial downloads stay on disk
for the next try, and the result carries an error naming the model, file and reason.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from shardsync.store import FileEntry, ShardsyncError, Store, Version

from .config import ModelConfig
from .fairshare import FairLimiter
from .fetch import Fetched, Fetcher, Validators
from .groupcheck import check_group_bytes
from .tfjs import Group, Manifest, parse_manifest, shard_url

__all__ = ["Progress", "SyncResult", "Syncer"]

log = logging.getLogger(__name__)

#: A stored manifest up to this size is read and re-hashed on the event loop (~0.1 ms):
#: a worker-thread hop costs more than that. Real model.json files are a few kB to a few
#: MB; bigger ones go to a thread so the other downloads do not stall.
_INLINE_READ = 256 * 1024


@dataclass
class Progress:
    """Live state of one model's sync, read by the progress bar and the status socket.

    ``queued`` is a model waiting for a download slot that other models hold (before
    its manifest request, and again before its first file), so that a waiting model
    is not shown as downloading at 0 B/s.
    """

    state: str = "idle"  # idle | queued | checking | downloading | publishing | error
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    received: int = 0  # body bytes over the network (resumes and retries included)
    started: float = field(default_factory=time.monotonic)

    def reset(self, state: str) -> None:
        self.state = state
        self.bytes_done = self.bytes_total = self.files_done = self.files_total = 0
        self.received = 0
        self.started = time.monotonic()

    def to_json(self) -> dict[str, int]:
        return {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "files_done": self.files_done, "files_total": self.files_total}


@dataclass
class SyncResult:
    """What one sync of one model did. ``error`` is set when it failed."""

    name: str
    version: str | None = None     # the current version after this sync
    changed: bool = False          # a new version was published
    received: int = 0              # body bytes received
    files_fetched: int = 0         # files whose body came over the network
    files_reused: int = 0          # files answered 304 or already held
    error: ShardsyncError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "version": self.version,
                "changed": self.changed, "received": self.received,
                "files_fetched": self.files_fetched, "files_reused": self.files_reused,
                "error": str(self.error) if self.error else None}


@dataclass
class _Flight:
    """One file being fetched; others needing the same URL wait for ``done``."""

    done: trio.Event = field(default_factory=trio.Event)
    entry: FileEntry | None = None
    error: ShardsyncError | None = None


@dataclass
class _Answer:
    entry: FileEntry  # its path is not meaningful here: the caller puts the model's own
    fetched: bool     # the body came over the network in this call
    received: int


class Syncer:
    """Syncs models into ``store`` through ``fetcher``, ``limiter`` files at a time.

    The limiter is shared fairly between models (:mod:`.fairshare`, round-robin), so a
    small model is published without waiting for a big one's queued shards.
    """

    def __init__(
        self,
        store: Store,
        fetcher: Fetcher,
        *,
        concurrency: int = 4,
        max_model_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.limiter = FairLimiter(concurrency)
        self.max_model_bytes = max_model_bytes
        self._inflight: dict[str, _Flight] = {}
        self._known: dict[str, FileEntry] | None = None  # canonical URL -> newest entry
        # URLs with a download record on disk (Store.downloaded): dropped once a recorded
        # version holds them, without listing the records' directory on every sync.
        self._recorded: set[str] = set()

    # -- the index of files already held ------------------------------------------

    def _index(self) -> dict[str, FileEntry]:
        """Canonical URL -> the file the store holds for it: from every current version,
        then from the download records (newer: files an interrupted sync finished)."""
        if self._known is None:
            self._known = {}
            for name in self.store.model_names():
                try:
                    version = self.store.current(name)
                except ShardsyncError as exc:
                    # An unreadable ref (a planted symlink) is that model's own sync's
                    # failure; here it only means its files are not reused.
                    log.warning("%s", exc.with_context(model=name))
                    continue
                if version is not None:
                    self._learn(version)
            for d in self.store.downloaded():
                self._known[d.url] = FileEntry("-", d.digest, d.size, {
                    "url": d.url, "etag": d.etag, "last_modified": d.last_modified})
                self._recorded.add(d.url)
        return self._known

    def _learn(self, version: Version) -> None:
        assert self._known is not None
        for entry in (version.manifest, *version.files):
            url = entry.meta.get("url")
            if url:
                self._known[url] = entry

    # -- one model -----------------------------------------------------------------

    async def sync(self, model: ModelConfig, progress: Progress | None = None) -> SyncResult:
        """Bring ``model`` up to date; never raises a ShardsyncError (see ``error``)."""
        progress = progress or Progress()
        result = SyncResult(model.name)
        progress.reset("queued")
        try:
            await self._sync(model, progress, result)
            progress.state = "idle"
        except ShardsyncError as exc:
            result.error = exc.with_context(model=model.name)
            progress.state = "error"
            log.warning("%s", result.error)
        except Exception as exc:
            # The last resort: a bug, or an input no check above foresaw. It stays this
            # model's failure (a nursery would otherwise cancel every other model's sync).
            log.debug("model %s: unexpected error", model.name, exc_info=True)
            result.error = ShardsyncError(f"internal error: {type(exc).__name__}: {exc}",
                                          model=model.name)
            progress.state = "error"
            log.error("%s", result.error)
        result.received = progress.received
        try:
            result.version = self.store.current_id(model.name)
        except ShardsyncError as exc:
            # An unreadable ref (a planted symlink, an I/O error) has usually just failed
            # the sync itself; either way it is this model's failure, never the pass's.
            result.error = result.error or exc.with_context(model=model.name)
            progress.state = "error"
        return result

    async def _sync(self, model: ModelConfig, progress: Progress, result: SyncResult) -> None:
        store = self.store
        previous = store.current(model.name)
        index = self._index()
        known = index.get(model.url)
        # Under the download limit too: a pass over many models would otherwise queue
        # every manifest request in httpcore's pool at once, whose bookkeeping grows with
        # the queue (each answer rescans every waiting request against every connection).
        async with self.limiter.slot(model.name):  # "queued" until then
            progress.state = "checking"
            mf = await self.fetcher.manifest(model.url, _validators(known, store))
        manifest_digest: str | None = None  # known when the manifest comes from the store
        if mf.data is None:
            assert known is not None
            if known.size <= _INLINE_READ:
                data = store.read_object(known.digest, model=model.name)
            else:
                data = await trio.to_thread.run_sync(
                    functools.partial(store.read_object, known.digest, model=model.name))
            manifest_digest, validators = known.digest, mf.validators
        else:
            data, validators = mf.data, mf.validators
        kwargs = {"max_total": self.max_model_bytes} if self.max_model_bytes else {}
        manifest = parse_manifest(data, manifest_url=model.url, **kwargs)
        progress.files_total = len(manifest.files)
        progress.bytes_total = manifest.expected_size or 0

        files: dict[str, FileEntry] = {}
        errors: list[ShardsyncError] = []
        progress.state = "queued"  # "downloading" once its first file has a slot

        async def one(group: Group, path: str) -> None:
            try:
                answer = await self._file(model, group, path, progress)
            except ShardsyncError as exc:
                errors.append(exc.with_context(model=model.name))
                return
            e = answer.entry
            files[path] = FileEntry(path, e.digest, e.size, e.meta)
            if answer.fetched:
                result.files_fetched += 1
            else:
                result.files_reused += 1
                progress.bytes_done += e.size
            progress.files_done += 1

        async with trio.open_nursery() as nursery:
            for group in manifest.groups:
                for path in group.paths:
                    nursery.start_soon(one, group, path)
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.reason += f" (and {len(errors) - 1} more file(s) failed)"
            raise first

        if manifest_digest is None:  # else it is the object we just read and verified
            manifest_digest = await trio.to_thread.run_sync(store.put_bytes, data)
        meta = {"url": model.url, "etag": validators.etag,
                "last_modified": validators.last_modified}
        manifest_entry = FileEntry(manifest.filename, manifest_digest, len(data), meta)
        ordered = [files[p] for p in manifest.files]
        version = Version.build(model.name, manifest_entry, ordered)
        if previous is not None and previous.id == version.id:
            # The same bytes as the published version, whose groups were checked before
            # it was published: no need to walk string weights again on every check.
            if _metas(previous) != _metas(version):
                await trio.to_thread.run_sync(store.update_record, version)
        else:
            await self._check_groups(model, manifest, files)
            progress.state = "publishing"
            await trio.to_thread.run_sync(store.publish, version)
            result.changed = True
            log.info("model %s: published version %s", model.name, version.id)
        self._learn(version)
        await self._forget_downloads(version)

    async def _forget_downloads(self, version: Version) -> None:
        """Drop the download records a recorded ``version`` now makes redundant."""
        urls = {str(e.meta.get("url")) for e in version.files} & self._recorded
        if urls:
            self._recorded -= urls
            await trio.to_thread.run_sync(self.store.forget_downloads, sorted(urls))

    async def _file(
        self, model: ModelConfig, group: Group, path: str, progress: Progress
    ) -> _Answer:
        """The file at ``path`` of ``model``: from the origin, deduplicated by URL."""
        url = shard_url(model.url, path)
        while (other := self._inflight.get(url)) is not None:
            await other.done.wait()  # another model fetches the same URL right now
            if other.error is not None:
                raise _own_copy(other.error)  # ours to name our model in
            if other.entry is not None:
                return _Answer(other.entry, False, 0)
            # its sync was cancelled (model removed, shutdown): fetch it ourselves
        flight = self._inflight[url] = _Flight()
        try:
            answer = await self._fetch(model, group, url, progress)
            flight.entry = answer.entry
            # Known from now on, not only once this model's version is recorded: another
            # model that asks for this URL after the flight has landed (while this model
            # still syncs, or if it fails later) asks conditionally and gets a 304.
            self._index()[url] = answer.entry
            return answer
        except ShardsyncError as exc:
            # A copy, taken before our caller names our model in it: each waiting model
            # gets its own, so an error never says another model's name.
            flight.error = _own_copy(exc)
            raise
        finally:
            del self._inflight[url]
            flight.done.set()

    async def _fetch(
        self, model: ModelConfig, group: Group, url: str, progress: Progress
    ) -> _Answer:
        store = self.store
        known = self._index().get(url)
        max_size = group.expected_size if group.expected_size is not None \
            else self.max_model_bytes

        def count(n: int) -> None:
            progress.bytes_done += n
            progress.received += n

        async with self.limiter.slot(model.name):
            progress.state = "downloading"  # from "queued", at its first file
            got: Fetched = await self.fetcher.file(
                url, store, validators=_validators(known, store), max_size=max_size,
                progress=count, source=model.url,
            )
        if got.digest is None:  # 304: the file we hold is current
            assert known is not None
            return _Answer(known, False, 0)
        self._recorded.add(url)  # the commit left a download record
        meta = {"url": url, "etag": got.validators.etag,
                "last_modified": got.validators.last_modified}
        return _Answer(FileEntry("-", got.digest, got.size, meta), True, got.received)

    async def _check_groups(
        self, model: ModelConfig, manifest: Manifest, files: dict[str, FileEntry]
    ) -> None:
        """Every group's shards must hold exactly its weights (TF.js never checks)."""
        for group in manifest.groups:
            if group.expected_size is not None:
                check_group_bytes(group, sum(files[p].size for p in group.paths),
                                  model=model.name)
            else:
                chunks = self._chunks([files[p].digest for p in group.paths])
                await trio.to_thread.run_sync(
                    functools.partial(check_group_bytes, group, chunks, model=model.name))

    def _chunks(self, digests: list[str]) -> Iterator[bytes]:
        for digest in digests:
            yield from self.store.iter_object(digest)


def _validators(known: FileEntry | None, store: Store) -> Validators | None:
    """Validators to ask with, if the store still holds the file they describe."""
    if known is None or not store.has_object(known.digest):
        return None
    v = Validators(known.meta.get("etag"), known.meta.get("last_modified"))
    return v or None


def _own_copy(exc: ShardsyncError) -> ShardsyncError:
    """A copy of ``exc`` (attributes and cause) that its holder may fill in alone."""
    dup = copy.copy(exc)
    dup.__cause__ = exc.__cause__
    return dup


def _metas(version: Version) -> list[Any]:
    return [dict(e.meta) for e in (version.manifest, *version.files)]

