"""The sync of one model: manifest → plan → fetch what is missing → verify → publish.

A :class:`Syncer` is shared by every model of a run (the CLI's one pass, or the
service): it holds the one store, the one fetcher, the download limit and the
table of downloads in flight, so that a shard two models share is fetched once,
also when both sync at the same time.

What one :meth:`Syncer.sync` does:

0. For a model with trusted keys (:func:`.signing.trusted_keys`), GET its signature
   ``<manifest>.sig.json`` first (conditionally, like any file) and check it
   (:mod:`.signing`): a valid signature by a trusted key, not expired, its version not
   below the last accepted (the store's trust record). From then on every file is held
   to the length and SHA-256 the signature lists, and a file whose listed digest the
   store already holds is not asked for at all (the manifest included). On a 404 or
   410 the URL may be a signed shardsync site's entry point (:meth:`Syncer._signed`):
   its claim names the version whose own signature, under ``versions/<id>/``, is the
   one checked, and the entry point must confirm against the signed pinned manifest.
1. GET the manifest, conditionally with the validators of the current version
   (a 304 reuses the manifest the store holds), and parse it (:mod:`.tfjs`). When
   it is a shardsync site's entry point (:mod:`.upstream`), the manifest its version
   pins is synced instead, so the version id is the site's (checked before publishing;
   without keys, the version's signature is carried as one of its files when the id
   says upstream's version holds one: :meth:`Syncer._carried_signature`); the entry
   point's own validators are kept with the pinned manifest's record, and a 304 for it
   renders its bytes again from the pinned manifest held.
2. For every shard, ask the origin, conditionally when the store already holds a
   file from that canonical URL (a 304 reuses it, costing no body); otherwise
   download it, resuming any partial. Each file is hashed while it streams.
3. Check every weight group's bytes against the manifest (TF.js never does).
4. Record the version (the tree digest) and, if it differs from the current one,
   publish it. A signed version holds its signature as one more file,
   ``<manifest>.sig.json``, so it is published beside the pinned manifest under
   ``versions/<id>/`` (docs/design.md, "Signed models"); its trust record is written
   before the publish, so the record never lags the published version.
   A pinned model (``shardsync pin`` / ``rollback``) is checked all the same, and its
   new version downloaded and recorded, but the store holds it back
   (:meth:`Store.publish` returns False; the pin's ``waiting`` names it): status can
   say exactly which version waits, and an unpin publishes it without the network.
   Its trust record is left as it is, since it names the version it let in.

With download windows (:mod:`.windows`, the service's), a shard that needs a body
waits before its request, outside its download slot, until a window opens (state
``waiting``; ``Progress.waiting`` says for which window and until when); a shard with
validators is still asked conditionally, and waits only if the answer has a body.
The manifest and the signature are read at any time: they are the check.

A model with ``mirrors`` is synced from its sources in order (:meth:`Syncer._sync_sources`):
``url`` first, and each mirror in turn while the failure is the source's (anything but
the store's own: :data:`_LOCAL_ERRORS`), the whole model from one source. The version
id is the tree digest, so it is the same whichever source served it, and the version
record's manifest URL says which one did (``SyncResult.source``).

On any failure the current version stays published, partial downloads stay on disk
for the next try, and the result carries an error naming the model, file and reason.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from shardsync.store import (
    VERSIONS_DIR,
    FileEntry,
    IntegrityError,
    LockedError,
    NotFoundError,
    ShardsyncError,
    StorageError,
    Store,
    Version,
)

from .config import ModelConfig
from .entrypoint import rewrite_paths
from .errors import SignatureError, UpstreamError
from .fairshare import FairLimiter
from .fetch import BodyDeferred, Fetched, Fetcher, ManifestFetch, Validators
from .groupcheck import check_group_bytes
from .signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    Listed,
    Signed,
    check_rollback,
    trust_record,
    trusted_keys,
    verify_signature,
)
from .tfjs import Group, Manifest, manifest_filename, parse_manifest, shard_url, signature_url
from .upstream import Claim, borrowable, claim, confirms
from .urls import redact_url
from .windows import Closed, DownloadWindows

__all__ = ["Progress", "SyncResult", "Syncer", "source_of"]

log = logging.getLogger(__name__)

#: A stored manifest up to this size is read and re-hashed on the event loop (~0.1 ms):
#: a worker-thread hop costs more than that. Real model.json files are a few kB to a few
#: MB; bigger ones go to a thread so the other downloads do not stall.
_INLINE_READ = 256 * 1024

#: The pinned manifest's meta key for the site's entry point it was synced through
#: (``url``, ``etag``, ``last_modified``): the entry point is no file of the version, so
#: its validators are kept here, to ask a warm check of an unchanged site conditionally.
_SITE_ENTRY = "entry"
#: Index-only meta key: the known file is a site's entry point, held as the manifest
#: it renders with the paths of version ``<value>`` (never written to a record).
_RENDERS = "renders"

#: Failures of this machine, not of the source: another source would meet them too (a
#: full disk, a busy store), so they end the sync at once. Every other ShardsyncError
#: (unreachable, TLS, timeout, any HTTP error after the fetcher's retries, a manifest
#: refused, bytes that fail a check, a signature that does not let the model through)
#: could be the source's own, and the next mirror is tried.
_LOCAL_ERRORS = (StorageError, LockedError)

#: HTTP statuses that say a signature is not there (not that the origin failed).
_MISSING = (404, 410)


@dataclass
class Progress:
    """Live state of one model's sync, read by the progress bar and the status socket.

    ``queued`` is a model waiting for a download slot that other models hold (before
    its manifest request, and again before its first file), so that a waiting model
    is not shown as downloading at 0 B/s.
    """

    state: str = "idle"  # idle | queued | checking | waiting | downloading | publishing | error
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    received: int = 0  # body bytes over the network (resumes and retries included)
    started: float = field(default_factory=time.monotonic)
    #: While state is ``waiting``: the download window waited for and when it opens
    #: (:meth:`.windows.Closed.to_json`); None otherwise.
    waiting: dict[str, Any] | None = None
    #: The last failed attempt at a request that will be tried again (:meth:`retry`),
    #: until that request gets through or the sync ends: why a check takes long (an
    #: origin down rides out ~30 s of retries before the sync fails). None otherwise.
    retrying: dict[str, Any] | None = None

    def reset(self, state: str) -> None:
        self.state = state
        self.waiting = None
        self.retrying = None
        self.bytes_done = self.bytes_total = self.files_done = self.files_total = 0
        self.received = 0
        self.started = time.monotonic()

    def retry(self, exc: ShardsyncError, attempt: int, delay: float) -> None:
        """The fetcher's :data:`.fetch.RetryHook`: attempt ``attempt`` failed with
        ``exc``, the next comes in ``delay`` seconds."""
        self.retrying = {"file": exc.file, "error": exc.reason, "attempt": attempt,
                         "next_try": time.time() + delay}

    def answered(self, url: str) -> None:
        """A request for ``url`` got through: a retry of it is no longer pending."""
        if self.retrying is not None and self.retrying["file"] == url:
            self.retrying = None

    def to_json(self) -> dict[str, int]:
        return {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "files_done": self.files_done, "files_total": self.files_total}


@dataclass
class SyncResult:
    """What one sync of one model did. ``error`` is set when it failed."""

    name: str
    version: str | None = None     # the current version after this sync
    changed: bool = False          # a new version was published
    #: The version the origin offers that a pin holds back (recorded, not published).
    held_back: str | None = None
    received: int = 0              # body bytes received
    files_fetched: int = 0         # files whose body came over the network
    files_reused: int = 0          # files answered 304 or already held
    error: ShardsyncError | None = None
    #: The store's trust record after this sync (signed models; None otherwise): what
    #: the service shows of the signature without reading it back from disk.
    signature: dict[str, Any] | None = None
    #: The source (``url`` or a mirror, userinfo redacted) that last served the current
    #: version: its record's manifest URL. None with no current version.
    source: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "version": self.version,
                "source": self.source, "changed": self.changed, "held_back": self.held_back,
                "received": self.received,
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


@dataclass(frozen=True)
class _Accepted:
    """A model's signature that passed every check: what it signs, its file as the
    version will hold it, and the trust record as it was before this sync."""

    signed: Signed
    entry: FileEntry
    record: dict[str, Any] | None


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
        windows: DownloadWindows | None = None,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        #: When shard bodies may be downloaded (None: always); the service's.
        self.windows = windows
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
                with contextlib.suppress(ShardsyncError):  # the model's own sync reports it
                    pin = self.store.pinned(name)
                    if pin is not None and pin.waiting is not None:
                        # What the origin offered last: ask about its files, not the pin's.
                        self._learn(self.store.version(name, pin.waiting))
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
        site_entry = version.manifest.meta.get(_SITE_ENTRY)
        if isinstance(site_entry, dict) and site_entry.get("url"):
            # A shardsync site's entry point, not a file of the version: known as the
            # pinned manifest it renders (held), with the entry point's own validators.
            m = version.manifest
            self._known[str(site_entry["url"])] = FileEntry(
                m.path, m.digest, m.size, {**site_entry, _RENDERS: version.id})

    # -- one model -----------------------------------------------------------------

    async def sync(self, model: ModelConfig, progress: Progress | None = None) -> SyncResult:
        """Bring ``model`` up to date; never raises a ShardsyncError (see ``error``)."""
        progress = progress or Progress()
        result = SyncResult(model.name)
        progress.reset("queued")
        try:
            await self._sync_sources(model, progress, result)
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
            current = self.store.current(model.name)
            if current is not None:
                result.version = current.id
                result.source = source_of(current)
        except ShardsyncError as exc:
            # An unreadable ref (a planted symlink, an I/O error) has usually just failed
            # the sync itself; either way it is this model's failure, never the pass's.
            result.error = result.error or exc.with_context(model=model.name)
            progress.state = "error"
        return result

    async def _sync_sources(self, model: ModelConfig, progress: Progress,
                            result: SyncResult) -> None:
        """:meth:`_sync` from ``url``, then from each mirror in order while the failure
        is the source's (not one of :data:`_LOCAL_ERRORS`); raises the first source's
        error, naming what each mirror said, when none of them served the model.

        Each source is asked for the whole model: its shard URLs are relative to its
        manifest. Files are known per URL (validators, download records), so a source
        other than the one the current version was last checked from is read in full
        once, and its bytes stored deduplicated; the version id, the tree digest, is the
        same, so nothing new is published, and the record takes that source's
        validators (later checks there are conditional). Each failed source is logged.
        """
        sources = model.sources()
        errors: list[ShardsyncError] = []
        for n, source in enumerate(sources):
            if n:
                progress.reset("queued")
                progress.received = result.received  # bytes of the sources before
            try:
                await self._sync(source, progress, result)
                return
            except _LOCAL_ERRORS:
                raise
            except ShardsyncError as exc:
                errors.append(exc.with_context(model=model.name))
                if n + 1 < len(sources):
                    log.warning("%s; trying mirror %d, %s", exc, n + 1,
                                redact_url(sources[n + 1].url))
            finally:
                result.received = progress.received
        first = errors[0]
        if len(errors) > 1:
            first.reason += "; " + "; ".join(
                f"mirror {n}: {_without_model(e)}" for n, e in enumerate(errors[1:], 1))
        raise first

    async def _sync(self, model: ModelConfig, progress: Progress, result: SyncResult,
                    *, chain: str = "detect") -> None:
        """``chain``: ``"detect"`` a shardsync site as the origin (:mod:`.upstream`),
        lending unchanged shards the validators of the version before; ``"no-borrow"``
        the same without lending; ``"plain"`` no detection (the manifest as it is).

        With trusted keys, :meth:`_signed` finds the site (or not) before anything
        else is read, and ``chain`` plays no part: every file is held to the signature,
        so nothing is lent and nothing is synced again."""
        store = self.store
        previous = store.current(model.name)
        index = self._index()
        keys = trusted_keys(model)
        accepted: _Accepted | None = None
        site: Claim | None = None  # a shardsync site's claim, once confirmed or signed
        entry = b""  # with keys and a site: the entry point, to confirm against the signed
        if keys:
            accepted, site, entry = await self._signed(model, keys, progress)
        url = model.url if site is None else site.manifest_url  # the manifest's URL
        known = index.get(url)
        name = manifest_filename(model.url)
        signed_files = accepted.signed.files if accepted else None
        listed = signed_files.get(name) if signed_files else None
        if signed_files is not None and listed is None:
            raise SignatureError(f"the manifest {name!r} is not in the signed files",
                                 file=url)
        if listed is not None and store.has_object(listed.sha256):
            # Signed bytes the store holds: nothing to ask the origin (validators kept
            # only if they describe these bytes).
            held = known if known is not None and known.digest == listed.sha256 else None
            mf = ManifestFetch(None, Validators(held.meta.get("etag"),
                                                held.meta.get("last_modified"))
                               if held else Validators())
            known = FileEntry(name, listed.sha256, listed.length)
        else:
            # Under the download limit too: a pass over many models would otherwise queue
            # every manifest request in httpcore's pool at once, whose bookkeeping grows
            # with the queue (each answer rescans every waiting request against every
            # connection).
            async with self.limiter.slot(model.name):  # "queued" until then
                progress.state = "checking"
                if listed is None:
                    mf = await self.fetcher.manifest(url, _validators(known, store),
                                                     on_retry=progress.retry)
                else:  # a 304 could hand back other bytes than the signed ones
                    mf = await self.fetcher.manifest(url, None, max_size=listed.length,
                                                     on_retry=progress.retry)
                progress.answered(url)
        manifest_digest: str | None = None  # known when the manifest comes from the store
        if mf.data is None:
            assert known is not None
            data = await self._read(known, model)
            validators = mf.validators
            if (renders := known.meta.get(_RENDERS)) is not None:
                # A site's entry point, unchanged: the bytes it was, rendered again from
                # the pinned manifest held, as the site rendered them.
                data = rewrite_paths(data, f"{VERSIONS_DIR}/{renders}/")
            else:
                manifest_digest = known.digest
        else:
            data, validators = mf.data, mf.validators
            if listed is not None:
                await _check_listed(data, listed, file=url)
        entry_validators = validators  # the entry point's, when the origin is a site
        if site is not None:
            # Signed: the entry point only said which signature to fetch; it must be
            # what the site renders from the signed manifest, or it is not the site's.
            if not confirms(site, entry, data):
                raise SignatureError(
                    f"the entry point is not the signed manifest of version {site.version} "
                    f"({site.manifest_url}) as a shardsync site renders it", file=model.url)
        elif not keys and chain != "plain" and (site := claim(model.url, data)) is not None:
            have = await self._held(model, site, data)
            if have is not None:
                await self._conclude_held(model, have, entry_validators, previous, result,
                                          progress)
                return
            pinned = await self._pinned(model, site, data, progress)
            if pinned is None:
                site = None
            else:
                url = site.manifest_url
                data, validators, manifest_digest = pinned
        kwargs = {"max_total": self.max_model_bytes} if self.max_model_bytes else {}
        manifest = parse_manifest(data, manifest_url=url, **kwargs)
        if signed_files is not None:
            unlisted = [p for p in manifest.files if p not in signed_files]
            if unlisted:
                more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
                raise SignatureError(f"shard {unlisted[0]!r} is not in the signed files{more}",
                                     file=shard_url(url, unlisted[0]))
        progress.files_total = len(manifest.files)
        progress.bytes_total = manifest.expected_size or 0

        files: dict[str, FileEntry] = {}
        errors: list[ShardsyncError] = []
        lent = {} if site is None or previous is None or chain != "detect" or keys else {
            shard_url(url, f.path): f for f in previous.files
            if borrowable(site, f.path, str(f.meta.get("url", "")))}
        progress.state = "queued"  # "downloading" once its first file has a slot

        async def one(group: Group, path: str) -> None:
            want = signed_files[path] if signed_files is not None else None
            try:
                answer = await self._file(model, url, group, path, progress, want, lent)
                e = answer.entry
                if want is not None and (e.digest, e.size) != (want.sha256, want.length):
                    # Bytes another model's fetch of the same URL brought, unsigned.
                    raise IntegrityError(
                        "differs from the length and SHA-256 its signature lists",
                        file=shard_url(url, path),
                        expected=f"{want.length} bytes, {want.sha256}",
                        actual=f"{e.size} bytes, {e.digest}")
            except ShardsyncError as exc:
                errors.append(exc.with_context(model=model.name))
                return
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
        meta: dict[str, Any] = {"url": url, "etag": validators.etag,
                                "last_modified": validators.last_modified}
        if site is not None and accepted is None:
            # The entry point's validators, for the next check (see _learn); a keyed
            # check reads the entry point only after the signature, and whole.
            meta[_SITE_ENTRY] = {"url": model.url, "etag": entry_validators.etag,
                                 "last_modified": entry_validators.last_modified}
        manifest_entry = FileEntry(manifest.filename, manifest_digest, len(data), meta)
        ordered = [files[p] for p in manifest.files]
        if accepted is not None:
            ordered.append(accepted.entry)
        version = Version.build(model.name, manifest_entry, ordered)
        if site is not None and version.id != site.version and accepted is None:
            # The id is over every file of upstream's version: if it is not the id of
            # the manifest and shards, upstream's version holds its signature too.
            carried = await self._carried_signature(model, site, progress)
            if carried is not None:
                version = Version.build(model.name, manifest_entry, [*ordered, carried])
        if site is not None and version.id != site.version and accepted is not None:
            # Every file is the one the signature lists, none lent, and the layout is
            # flat: a site not quite shardsync's; syncing again would change nothing.
            log.warning("model %s: %s pins version %s but its signed files make version "
                        "%s; publishing that", model.name, model.url, site.version, version.id)
        elif site is not None and version.id != site.version:
            # Not the site's version after all: lent validators that matched other bytes
            # (the id is over every file's digest, so it catches that), or not a
            # shardsync site. Nothing is published; try again without what was assumed.
            again = "no-borrow" if lent and chain == "detect" else "plain"
            log.warning("model %s: %s pins version %s but its files make version %s; "
                        "syncing again %s", model.name, model.url, site.version, version.id,
                        "without lent validators" if again == "no-borrow"
                        else "as a plain origin")
            result.files_fetched = result.files_reused = 0
            index = self._index()
            for u, f in lent.items():  # a lent 304 left the lent file known under u
                if (got := index.get(u)) is not None and got.digest == f.digest:
                    del index[u]
            await self._sync(model, progress, result, chain=again)
            return
        await self._conclude(model, accepted, version, previous, result, progress,
                             functools.partial(self._check_groups, model, manifest, files))

    async def _conclude(self, model: ModelConfig, accepted: _Accepted | None, version: Version,
                        previous: Version | None, result: SyncResult, progress: Progress,
                        check: Callable[[], Awaitable[None]] | None) -> None:
        """Record, hold or publish ``version``, the model's version as the origin has it
        now; ``check`` walks its weight groups before a version not yet published goes
        out (None: one the store recorded, checked when it was)."""
        store = self.store
        if previous is not None and previous.id == version.id:
            # The same bytes as the published version, whose groups were checked before
            # it was published: no need to walk string weights again on every check.
            if _metas(previous) != _metas(version):
                await trio.to_thread.run_sync(store.update_record, version)
            await self._accept(model, accepted, version, result)
            pin = store.pinned(model.name)
            if pin is not None and pin.waiting is not None:  # the origin is back at the pin
                await trio.to_thread.run_sync(store.hold, version)
        else:
            if check is not None:
                await check()
            if store.pinned(model.name) is None:
                # The trust record names the version it let in: not one a pin holds back.
                await self._accept(model, accepted, version, result)
            progress.state = "publishing"
            if await trio.to_thread.run_sync(store.publish, version):
                result.changed = True
                log.info("model %s: published version %s", model.name, version.id)
            else:
                result.held_back = version.id
                log.info("model %s: pinned; version %s is held back", model.name, version.id)
        self._learn(version)
        await self._forget_downloads(version)

    async def _held(self, model: ModelConfig, site: Claim, entry: bytes) -> Version | None:
        """The version ``site``'s entry point ``entry`` pins, when the store already
        holds it for ``model``, whole, and its manifest renders to ``entry`` exactly (the
        confirmation :func:`.upstream.confirms` makes, without fetching the manifest).

        Why it may be trusted: the id is the tree digest of every file's path and
        digest, so a version the store recorded under ``site.version`` holds exactly the
        files upstream's does; and the store recorded it only after checking them (a
        sync, an import, a USB stick's ``file://`` mirror). Then nothing is asked for:
        a warm check of an unchanged site is its entry point alone, and a kiosk that got
        the version from elsewhere moves no byte when it next checks the gateway."""
        store = self.store
        try:
            version = await trio.to_thread.run_sync(store.version, model.name, site.version)
        except NotFoundError:
            return None
        if not all(store.has_object(e.digest) for e in (version.manifest, *version.files)):
            return None  # gc'd since: fetch what is missing the usual way
        if not confirms(site, entry, await self._read(version.manifest, model)):
            return None
        return version

    async def _conclude_held(self, model: ModelConfig, held: Version, entry: Validators,
                             previous: Version | None, result: SyncResult,
                             progress: Progress) -> None:
        """:meth:`_conclude` for a site's version the store holds (:meth:`_held`): with
        the entry point's validators ``entry`` in its record, for the next check."""
        m = held.manifest
        meta = {**m.meta, _SITE_ENTRY: {"url": model.url, "etag": entry.etag,
                                        "last_modified": entry.last_modified}}
        version = dataclasses.replace(held, manifest=FileEntry(m.path, m.digest, m.size, meta))
        result.files_reused = len(version.files)
        progress.files_total = progress.files_done = len(version.files)
        progress.bytes_total = progress.bytes_done = sum(f.size for f in version.files)
        await self._conclude(model, None, version, previous, result, progress, None)

    async def _pinned(
        self, model: ModelConfig, site: Claim, entry: bytes, progress: Progress
    ) -> tuple[bytes, Validators, str | None] | None:
        """The manifest ``site`` claims the entry point ``entry`` pins, fetched
        (conditionally) as bytes, validators and the digest when the store held it; None
        when the origin has no such manifest or it does not confirm the claim (a plain
        origin whose paths only look like a site's)."""
        known = self._index().get(site.manifest_url)
        try:
            async with self.limiter.slot(model.name):
                mf = await self.fetcher.manifest(site.manifest_url,
                                                 _validators(known, self.store),
                                                 on_retry=progress.retry)
            progress.answered(site.manifest_url)
        except UpstreamError as exc:
            if exc.status is None or exc.status >= 500:
                raise  # the site may be down: not a reason to take it for a plain origin
            log.info("model %s: %s is not a shardsync site (%s)", model.name, model.url, exc)
            return None
        digest = None
        if mf.data is None:
            assert known is not None
            data, digest = await self._read(known, model), known.digest
        else:
            data = mf.data
        if not confirms(site, entry, data):
            log.info("model %s: %s is not a shardsync site: %s is not the manifest its "
                     "entry point renders", model.name, model.url, site.manifest_url)
            return None
        return data, mf.validators, digest

    async def _read(self, entry: FileEntry, model: ModelConfig) -> bytes:
        """The bytes of the held file ``entry``, on the loop when small (see _INLINE_READ)."""
        if entry.size <= _INLINE_READ:
            return self.store.read_object(entry.digest, model=model.name)
        return await trio.to_thread.run_sync(
            functools.partial(self.store.read_object, entry.digest, model=model.name))

    # -- signatures ------------------------------------------------------------------

    async def _signed(
        self, model: ModelConfig, keys: frozenset[bytes], progress: Progress
    ) -> tuple[_Accepted, Claim | None, bytes]:
        """The signature that lets ``model`` through (SignatureError if none does); and,
        when ``model.url`` is a shardsync site's entry point, the site's claim and the
        entry point's bytes (else None and ``b""``).

        The contract's order holds for every origin: ``<manifest URL>.sig.json`` before
        anything else. A site serves none there (its entry point is rewritten), so only
        on a 404 or 410 is the entry point read, for its claim alone (:func:`.upstream.
        claim`), and the claimed version's own signature, under ``versions/<id>/``, is
        checked like any other (the rollback check bounds which version an entry point
        can send us to). Nothing else of the entry point is believed: the caller
        confirms it against the signed pinned manifest. No claim: "no signature", as
        for any origin without one. Costs a site one 404 per check, and spares every
        other origin any change: no setting, no state decides the order.
        """
        beside = signature_url(model.url)
        try:
            return await self._signature(model, keys, beside, progress), None, b""
        except UpstreamError as exc:
            if exc.status not in _MISSING:
                raise
            missing = SignatureError(
                "no signature: the model has trusted public_keys, so the origin must serve "
                f"its signature, and it has none (HTTP {exc.status})", file=beside)
            missing.__cause__ = exc
        try:
            async with self.limiter.slot(model.name):
                progress.state = "checking"
                mf = await self.fetcher.manifest(model.url, on_retry=progress.retry)
            progress.answered(model.url)
        except UpstreamError as exc:
            if exc.status is not None and exc.status >= 500:
                raise  # the origin failing: its own error, for the next mirror to mend
            raise missing from exc  # only asked for a claim; the signature is what lacks
        site = None if mf.data is None else claim(model.url, mf.data)
        if site is None:
            raise missing
        try:
            accepted = await self._signature(model, keys, site.signature_url, progress)
        except UpstreamError as exc:
            if exc.status not in _MISSING:
                raise
            raise SignatureError(
                f"no signature: {model.url} is a shardsync site's entry point for version "
                f"{site.version}, and that version has no {SIGNATURE_SUFFIX} under "
                f"{site.prefix} (HTTP {exc.status}; published unsigned upstream?)",
                file=site.signature_url) from exc
        assert mf.data is not None
        return accepted, site, mf.data

    async def _signature(
        self, model: ModelConfig, keys: frozenset[bytes], url: str, progress: Progress
    ) -> _Accepted:
        """Fetch (conditionally: a 304 reuses the file the store holds) and check the
        signature of ``model`` at ``url``: SignatureError if it does not let the model
        through; the fetch's UpstreamError as it is (a 404 is the caller's to name)."""
        answer = await self._fetch(
            model, url, progress, MAX_SIGNATURE_BYTES, None, state="checking",
            limit=f"the {MAX_SIGNATURE_BYTES} bytes a signature may have")
        self._index()[url] = answer.entry
        e = answer.entry
        data = await self._read(e, model)
        signed = verify_signature(data, keys, now=time.time(), file=url)
        record = self.store.trust_record(model.name)
        check_rollback(signed, record, file=url)
        return _Accepted(signed, _signature_entry(model, e), record)

    async def _carried_signature(
        self, model: ModelConfig, site: Claim, progress: Progress
    ) -> FileEntry | None:
        """The signature of ``site``'s version as a file of ours, for a model without
        keys: fetched conditionally like any file, carried, not checked (there is no key
        to check it with), so that the version holds what upstream's holds and has its
        id. None when the site has none (HTTP 404 or 410)."""
        url = site.signature_url
        try:
            answer = await self._fetch(
                model, url, progress, MAX_SIGNATURE_BYTES, None,
                limit=f"the {MAX_SIGNATURE_BYTES} bytes a signature may have")
        except UpstreamError as exc:
            if exc.status not in _MISSING:
                raise
            return None
        self._index()[url] = answer.entry
        return _signature_entry(model, answer.entry)

    async def _accept(self, model: ModelConfig, accepted: _Accepted | None, version: Version,
                      result: SyncResult) -> None:
        """Remember the accepted signature durably (the trust record) before ``version``
        is published; written only when it changed, so a warm check writes nothing."""
        if accepted is None:
            return
        record = trust_record(accepted.signed, model_version=version.id,
                              signature_digest=accepted.entry.digest)
        if record != accepted.record:
            await trio.to_thread.run_sync(self.store.set_trust_record, model.name, record)
        result.signature = record

    async def _forget_downloads(self, version: Version) -> None:
        """Drop the download records a recorded ``version`` now makes redundant."""
        urls = {str(e.meta.get("url")) for e in version.files} & self._recorded
        if urls:
            self._recorded -= urls
            await trio.to_thread.run_sync(self.store.forget_downloads, sorted(urls))

    async def _file(
        self, model: ModelConfig, manifest_url: str, group: Group, path: str,
        progress: Progress, listed: Listed | None = None,
        lent: Mapping[str, FileEntry] | None = None,
    ) -> _Answer:
        """The file at ``path`` of the manifest at ``manifest_url``: from the origin,
        deduplicated by URL.

        With ``listed`` (its signature's length and SHA-256), a file whose digest the
        store already holds is not asked for at all, whatever URL brought it. ``lent``:
        URL -> a held file whose validators to ask with when none are held for the URL.
        """
        url = shard_url(manifest_url, path)
        if listed is not None and self.store.has_object(listed.sha256):
            known = self._index().get(url)
            meta = dict(known.meta) if known is not None and known.digest == listed.sha256 \
                else {"url": url}
            return _Answer(FileEntry("-", listed.sha256, listed.length, meta), False, 0)
        while (other := self._inflight.get(url)) is not None:
            await other.done.wait()  # another model fetches the same URL right now
            if other.error is not None:
                raise _own_copy(other.error)  # ours to name our model in
            if other.entry is not None:
                return _Answer(other.entry, False, 0)
            # its sync was cancelled (model removed, shutdown): fetch it ourselves
        flight = self._inflight[url] = _Flight()
        try:
            max_size = group.expected_size if group.expected_size is not None \
                else self.max_model_bytes
            answer = await self._fetch(model, url, progress, max_size, listed, windowed=True,
                                       lent=(lent or {}).get(url))
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
        self, model: ModelConfig, url: str, progress: Progress, max_size: int | None,
        listed: Listed | None, *, state: str = "downloading", limit: str = "its weight group",
        windowed: bool = False, lent: FileEntry | None = None,
    ) -> _Answer:
        """Fetch ``url`` into the store under a download slot: conditionally when the
        store holds a file from it, or, with ``listed``, unconditionally (the store does
        not hold the listed bytes, so a 304 would hand back other ones), reading at most
        the listed length and committing only the listed SHA-256.

        ``windowed`` (shards): keep the body to the download windows. A request that
        can only bring a body (no validators, or a partial to resume) waits for a
        window before it is sent and before it takes a slot; a conditional one goes out
        at once, and waits only if its answer has a body (closed unread).

        ``lent``: a file held from another URL whose validators are asked with when the
        store holds none from ``url`` (:func:`.upstream.borrowable`); its 304 is that
        file, now known under ``url``.
        """
        store = self.store
        known = self._index().get(url)
        if lent is not None and _validators(known, store) is None:
            known = FileEntry(lent.path, lent.digest, lent.size, {**lent.meta, "url": url})
        windows = self.windows if windowed else None

        def count(n: int) -> None:
            progress.bytes_done += n
            progress.received += n

        def body_allowed() -> bool:
            return windows is None or windows.closed() is None

        got: Fetched | None = None
        while got is None:
            validators = _validators(known, store) if listed is None else None
            if windows is not None and (validators is None or store.has_ingest(url)):
                await self._wait_window(windows, progress)
            async with self.limiter.slot(model.name):
                progress.state = state  # from "queued", at its first file
                try:
                    if listed is None:
                        got = await self.fetcher.file(
                            url, store, validators=validators, max_size=max_size,
                            progress=count, source=model.url, limit=limit,
                            body_allowed=body_allowed, on_retry=progress.retry)
                    else:
                        got = await self.fetcher.file(
                            url, store, max_size=listed.length, progress=count,
                            source=model.url, expected_digest=listed.sha256,
                            limit="the length its signature lists", body_allowed=body_allowed,
                            on_retry=progress.retry)
                    progress.answered(url)
                except BodyDeferred:
                    pass  # the window closed, or the file changed outside it
            if got is None:
                assert windows is not None
                await self._wait_window(windows, progress)
            elif listed is not None and got.size != listed.length:
                # shorter; a longer body stopped at the length
                raise IntegrityError("length differs from its signature", file=url,
                                     expected=listed.length, actual=got.size)
        if got.digest is None:  # 304: the file we hold is current
            assert known is not None
            return _Answer(known, False, 0)
        self._recorded.add(url)  # the commit left a download record
        meta = {"url": url, "etag": got.validators.etag,
                "last_modified": got.validators.last_modified}
        return _Answer(FileEntry("-", got.digest, got.size, meta), True, got.received)

    @staticmethod
    async def _wait_window(windows: DownloadWindows, progress: Progress) -> None:
        """Wait (holding no slot) until ``windows`` has one open; state ``waiting``."""
        if windows.closed() is None:
            return

        def show(closed: Closed) -> None:
            progress.state = "waiting"
            progress.waiting = closed.to_json()

        await windows.wait_open(show)
        progress.state, progress.waiting = "queued", None

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


async def _check_listed(data: bytes, listed: Listed, *, file: str) -> None:
    """IntegrityError unless ``data`` has the length and SHA-256 its signature lists."""
    if len(data) != listed.length:
        raise IntegrityError("length differs from its signature", file=file,
                             expected=listed.length, actual=len(data))
    if len(data) <= _INLINE_READ:
        digest = hashlib.sha256(data).hexdigest()
    else:
        digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    if digest != listed.sha256:
        raise IntegrityError("SHA-256 differs from its signature", file=file,
                             expected=listed.sha256, actual=digest)


def _signature_entry(model: ModelConfig, fetched: FileEntry) -> FileEntry:
    """The signature file ``fetched`` as a file of ``model``'s version: beside its
    manifest, ``<manifest>.sig.json``, where a signed plain origin has it and where a
    site publishes it (docs/design.md, "Signed models")."""
    path = manifest_filename(model.url) + SIGNATURE_SUFFIX
    return FileEntry(path, fetched.digest, fetched.size, fetched.meta)


def _validators(known: FileEntry | None, store: Store) -> Validators | None:
    """Validators to ask with, if the store still holds the file they describe."""
    if known is None or not store.has_object(known.digest):
        return None
    v = Validators(known.meta.get("etag"), known.meta.get("last_modified"))
    return v or None


def source_of(version: Version) -> str | None:
    """The source that last served ``version`` (its manifest's canonical URL, userinfo
    redacted in case a record predates the split), or None for a record without one."""
    url = version.manifest.meta.get("url")
    return redact_url(str(url)) if url else None


def _without_model(exc: ShardsyncError) -> str:
    """``exc`` as a message without its model (said once, by the error it joins)."""
    dup = _own_copy(exc)
    dup.model = None
    return str(dup)


def _own_copy(exc: ShardsyncError) -> ShardsyncError:
    """A copy of ``exc`` (attributes and cause) that its holder may fill in alone."""
    dup = copy.copy(exc)
    dup.__cause__ = exc.__cause__
    return dup


def _metas(version: Version) -> list[Any]:
    return [dict(e.meta) for e in (version.manifest, *version.files)]

