"""`shardsync run`: the service, in phases (startup → main loop → shutdown), as uvicorn has it.

Startup opens the store and the event log, starts the scheduler and the control
socket, and only then tells systemd ``READY=1``. The main loop is a set of tasks in
one nursery: the model tasks (:mod:`.scheduler`), the control socket, the config
watcher, the signal handler, the watchdog and the gc. Shutdown (SIGTERM, SIGINT)
sends ``STOPPING=1`` and cancels the nursery: downloads stop where they are and
their partials are checkpointed for the next start. What the control socket
answers is :mod:`.api`'s, reading this service.

Decisions beyond docs/design.md:

* A config that fails to load on reload is reported (log, status ``config_error``,
  an event) and the running config stays. ``state_dir``, ``site_dir``, ``socket``
  and ``metrics_listen`` cannot change while running; a reload that changes them
  applies everything else and says a restart is needed. (A listening address is
  deployment, like the socket: moving it live would turn a port clash into a failure
  half-way through a reload, after the rest was applied.)
* A reload applies changed ``[[origin]]`` blocks (and the userinfo of model URLs) at
  once: requests from then on go out with the new trust, certificates, token, headers
  and proxy (a rotated token file is read again); transfers already running finish
  on the connections they have. No restart is needed.
* A model removed from the config stops at once, and its published directory is
  removed after the store's grace period (5 min) counted from when it left the
  config, across restarts (:mod:`.removals`): a page that was loading it may
  finish, and a device does not keep serving (and storing) a model nobody
  configured. Re-adding it within the grace period keeps it. gc then frees its
  objects.
* gc runs in the service, a minute after a publish, never during a sync.
* The watchdog (``WatchdogSec``) is petted only while no sync has been stuck for
  :data:`STALL_LIMIT` (see :meth:`Scheduler.stalled`), and only while the event loop
  runs at all.
* Failing to write an event (disk full) is logged and does not stop the service:
  the event log reports, the store is the record.

Environment:

``SHARDSYNC_GRACE_SECONDS``
    The grace period in seconds (default :data:`~shardsync.store.GRACE_SECONDS`,
    300): how long a version that stopped being current, and a model removed from
    the config, stay published. A knob for tests, and for an operator who needs
    disk space back sooner; 0 removes at once.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from shardsync.store import (
    GRACE_SECONDS,
    LockedError,
    ShardsyncError,
    StorageError,
    Store,
    StoreStats,
)

from . import __version__
from .api import ControlApi
from .config import Config, load_config
from .control import serve_control
from .entrypoint import rewrite_paths
from .errors import ConfigError
from .events import EventLog
from .fetch import Fetcher
from .httpclient import Client, make_client
from .metricsserver import serve_metrics
from .notify import Notifier
from .pagescript import publish as publish_page_script
from .ratelimit import RateLimits
from .removals import RemovalTimes
from .scheduler import Gate, ModelState, Scheduler
from .sync import Syncer, SyncResult
from .tuning import tune_for_downloads
from .watch import watch_file
from .windows import DownloadWindows

__all__ = ["GRACE_ENV", "STALL_LIMIT", "Service", "grace_from_env", "run_service"]

log = logging.getLogger(__name__)

#: Wait after a publish before gc: several models often publish together; one gc
#: covers them all.
GC_DELAY = 60.0

#: The service's gc keeps unreferenced objects younger than this: the shards a sync
#: fetched before one of its files failed are referenced by no version yet, and the
#: next try (minutes away) needs them. A day is far beyond any backoff; `shardsync gc`
#: by hand keeps nothing back.
GC_MIN_AGE = 24 * 3600.0

#: A sync that has not moved (no byte, no file, no state change) for this long is
#: stuck despite every timeout in fetch.py: stop petting the watchdog so systemd
#: restarts us. Far above the fetch timeouts (30 s read, 60 s rate window).
STALL_LIMIT = 15 * 60.0

#: Connections the service's HTTP pool may hold: room for `concurrency` to be raised by
#: a reload up to half of this without a restart; idle ones cost nothing until used.
POOL_CONNECTIONS = 64

#: The environment variable that overrides the grace period (see the module docstring).
GRACE_ENV = "SHARDSYNC_GRACE_SECONDS"


def grace_from_env(environ: Mapping[str, str] | None = None) -> float:
    """The grace period from ``$SHARDSYNC_GRACE_SECONDS``, or the store's default.

    Raises :class:`ConfigError` naming the variable if it is not a number >= 0.
    """
    raw = (os.environ if environ is None else environ).get(GRACE_ENV, "").strip()
    if not raw:
        return GRACE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{GRACE_ENV} must be a number of seconds >= 0, not {raw!r}")
    return value


def run_service(config_path: Path) -> int:
    """Load the config (ConfigError propagates: exit 2) and run until SIGTERM; exit status.

    SIGINT stops the service as cleanly as SIGTERM (partials checkpointed, STOPPING=1),
    and then raises :class:`KeyboardInterrupt`: an operator's Ctrl-C ends like every
    other command's, with the CLI's one "interrupted" line and status 130.
    """
    config = load_config(config_path)
    service = Service(config, grace=grace_from_env())
    try:
        status = trio.run(service.run)
    except BaseExceptionGroup as group:
        raise _single_error(group) from None
    if service.interrupted:
        raise KeyboardInterrupt
    return status


def _single_error(group: BaseExceptionGroup) -> BaseException:
    """The one ShardsyncError a nursery wrapped (e.g. "already running" at start-up),
    so the CLI can report it in one line; else the group itself, a real bug."""
    errors = group.subgroup(lambda e: isinstance(e, ShardsyncError))
    if errors is not None:
        leaves: list[BaseException] = []
        stack: list[BaseException] = [errors]
        while stack:
            e = stack.pop()
            if isinstance(e, BaseExceptionGroup):
                stack.extend(e.exceptions)
            else:
                leaves.append(e)
        if len(leaves) == 1:
            return leaves[0]
    return group


class Service:
    """The running service; build it with a loaded config, then ``await run()``."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None,
                 grace: float = GRACE_SECONDS) -> None:
        self.config = config
        self.notifier = notifier or Notifier.from_env()
        self.grace = grace
        self.started = time.time()
        self.config_error: str | None = None
        self.store: Store | None = None
        self.events: EventLog | None = None
        self.scheduler: Scheduler | None = None
        self.syncer: Syncer | None = None
        self.client: Client | None = None
        self.gate = Gate()
        self._stop = trio.Event()
        #: Stopped by SIGINT (Ctrl-C) rather than SIGTERM: see :func:`run_service`.
        self.interrupted = False
        self._published = trio.Event()
        self._reload_lock = trio.Lock()
        self._removals: dict[str, trio.CancelScope] = {}
        self.removal_times: RemovalTimes | None = None  # when removed models left the config
        self._nursery: trio.Nursery | None = None
        #: Store totals for /metrics (api.py), dropped (None) whenever they change.
        self.store_stats: StoreStats | None = None
        # Current version per model, as the last sync left it: /v1/status must not read
        # every model's ref from disk on the event loop for each request.
        self.current_versions: dict[str, str | None] = {}
        # The source (url or mirror) that last served each current version; same reason.
        self.current_sources: dict[str, str | None] = {}
        # Trust record per model (signed models), as the last sync left it; same reason.
        self.trust_records: dict[str, dict[str, Any] | None] = {}
        self.api = ControlApi(self)  # what the control socket serves

    # -- phases --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> int:
        config = self.config
        tune_for_downloads()
        self.store = await trio.to_thread.run_sync(
            lambda: Store(config.state_dir, config.site_dir, entry_point=rewrite_paths,
                          keep_versions=config.keep_versions,
                          grace=self.grace))
        try:
            # The pages' script, current with this shardsync before any model publishes.
            await trio.to_thread.run_sync(publish_page_script, self.store)
        except BaseException:
            self.store.close()
            raise
        self.events = EventLog.open(Path(config.state_dir) / "events.jsonl")
        self.removal_times = RemovalTimes.open(config.state_dir)
        try:
            # The pool is sized once, but a reload may raise `concurrency` (the limiter
            # follows at once): leave room, connections only open when needed.
            pool = max(POOL_CONNECTIONS, config.concurrency * 2)
            async with make_client(max_connections=pool, origins=config.origins,
                                   models=config.models) as client:
                self.client = client
                rates = RateLimits()
                rates.apply(config)
                self.syncer = Syncer(self.store, Fetcher(client, rates=rates),
                                     concurrency=config.concurrency,
                                     max_model_bytes=config.max_model_bytes,
                                     windows=DownloadWindows(config.download_windows))
                await self._main(task_status)
        finally:
            self.events.close()
            self.store.close()
        return 0

    async def _main(self, task_status: trio.TaskStatus[None]) -> None:
        assert self.store and self.events and self.syncer
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.scheduler = Scheduler(self.syncer, self.gate, self._on_result)
            await nursery.start(self.scheduler.run)
            await nursery.start(self._signals)
            try:
                Path(config.socket).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError.from_oserror(
                    exc, "cannot create the control socket's directory",
                    file=str(Path(config.socket).parent)) from exc
            await nursery.start(serve_control, config.socket, self.api.router())
            if config.metrics_listen is not None:
                await nursery.start(serve_metrics, config.metrics_listen,
                                    self.api.metrics_router())
            self.scheduler.apply(config.models)
            unconfigured = set(self.store.model_names()) - {m.name for m in config.models}
            assert self.removal_times
            self.removal_times.keep_only(unconfigured)  # the others came back, or are gone
            for name in sorted(unconfigured):
                self._schedule_removal(name)
            await nursery.start(self._watch_config)
            nursery.start_soon(self.notifier.run_watchdog, self._making_progress)
            nursery.start_soon(self._gc_loop)
            self._event("service-started", version=__version__, pid=os.getpid(),
                        models=[m.name for m in config.models])
            self.notifier.ready()
            self._update_status()
            log.info("shardsync %s running: %d model(s), control socket %s", __version__,
                     len(config.models), config.socket)
            task_status.started()
            await self._stop.wait()
            log.info("stopping")
            self.notifier.stopping()
            self._event("service-stopping")
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Begin shutdown (what SIGTERM does): ``run`` returns soon after."""
        self._stop.set()

    def _event(self, type: str, /, **fields: Any) -> None:
        """Append to the event log; a failure is logged, never raised into the service."""
        assert self.events
        try:
            self.events.append(type, **fields)
        except ShardsyncError as exc:
            log.error("cannot record event %s: %s", type, exc)

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            task_status.started()
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    await self.reload("SIGHUP")
                else:
                    self.interrupted = self.interrupted or signum == signal.SIGINT
                    self.stop()

    async def _watch_config(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        send, receive = trio.open_memory_channel[None](1)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_file, self.config.path, send)
            task_status.started()
            async for _ in receive:
                await self.reload("the config file changed")

    # -- reload --------------------------------------------------------------------

    async def reload(self, why: str) -> str | None:
        """Re-read the config; returns None, or the error that kept the old config."""
        assert self.scheduler and self.syncer and self.store and self.events
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                try:
                    new = await trio.to_thread.run_sync(load_config, self.config.path)
                except ConfigError as exc:
                    self.config_error = str(exc)
                    log.error("reload (%s) failed, keeping the running config: %s", why, exc)
                    self._event("config-error", error=str(exc))
                    return str(exc)
                fixed = [k for k in ("state_dir", "site_dir", "socket", "metrics_listen")
                         if getattr(new, k) != getattr(self.config, k)]
                if fixed:
                    log.warning("reload: changing %s needs a restart; keeping the running "
                                "value(s)", ", ".join(fixed))
                    new = replace(new, state_dir=self.config.state_dir,
                                  site_dir=self.config.site_dir, socket=self.config.socket,
                                  metrics_listen=self.config.metrics_listen)
                assert self.client is not None
                try:
                    self.client.configure(new.origins, new.models)
                except (OSError, ValueError, ssl.SSLError) as exc:
                    # A CA or key file changed on disk since load_config checked it.
                    error = f"{self.config.path}: [[origin]] files could not be loaded: {exc}"
                    self.config_error = error
                    log.error("reload (%s) failed, keeping the running config: %s", why, error)
                    self._event("config-error", error=error)
                    return error
                self.config = new
                self.config_error = None
                self.syncer.limiter.total_tokens = new.concurrency
                self.syncer.max_model_bytes = new.max_model_bytes
                self.syncer.fetcher.rates.apply(new)  # running downloads too, from their next read
                if self.syncer.windows is not None:
                    self.syncer.windows.configure(new.download_windows)
                self.store.keep_versions = new.keep_versions
                added, removed, changed = self.scheduler.apply(new.models)
                assert self.removal_times
                for name in added + changed:
                    scope = self._removals.pop(name, None)
                    if scope is not None:
                        scope.cancel()
                    self.removal_times.forget(name)
                for name in removed:
                    self._schedule_removal(name)
                log.info("reloaded (%s): added %s, removed %s, changed %s", why,
                         added or "none", removed or "none", changed or "none")
                self._event("config-reloaded", reason=why, added=added, removed=removed,
                            changed=changed, needs_restart=fixed)
                return None
            finally:
                self.notifier.ready()
                self._update_status()

    def _schedule_removal(self, name: str) -> None:
        """Unpublish ``name`` a grace period after it left the config: recorded in
        state_dir (:mod:`.removals`), so a restart meanwhile does not start it again."""
        if name in self._removals or self._nursery is None:
            return
        assert self.removal_times
        self.removal_times.left(name)  # recorded now, unless an earlier run did
        scope = self._removals[name] = trio.CancelScope()
        self._nursery.start_soon(self._remove_later, name, scope)

    async def _remove_later(self, name: str, scope: trio.CancelScope) -> None:
        assert self.store and self.events and self.removal_times
        with scope:
            await trio.sleep(self.removal_times.remaining(name, self.store.grace))
            try:
                async with self.gate.collecting():
                    await trio.to_thread.run_sync(self.store.remove_model, name)
                self.current_versions.pop(name, None)
                self.current_sources.pop(name, None)
                self.trust_records.pop(name, None)
                self.removal_times.forget(name)
            except ShardsyncError as exc:
                log.error("model %s: cannot unpublish it: %s", name, exc)
                self._event("unpublish-failed", model=name, error=str(exc))
                return
            finally:
                if self._removals.get(name) is scope:
                    del self._removals[name]
            self.store_stats = None
            self._published.set()  # its objects are now garbage
            log.info("model %s: removed from the config, unpublished", name)
            self._event("model-unpublished", model=name)

    # -- results, gc, watchdog -----------------------------------------------------

    def _on_result(self, state: ModelState, result: SyncResult) -> None:
        assert self.events
        name = state.config.name
        self.current_versions[name] = result.version
        self.current_sources[name] = result.source
        if result.signature is not None:
            self.trust_records[name] = result.signature
        else:  # unsigned, or refused: the store's record says what the current one was
            self.trust_records.pop(name, None)
        if result.error is not None:
            self._event("sync-failed", model=name, error=str(result.error),
                        file=result.error.file)
        elif result.changed:
            self._event("published", model=name, version=result.version,
                        source=result.source, received=result.received)
            self.store_stats = None
            self._published.set()
        elif result.held_back is not None:  # pinned: what the origin offers waits
            self._event("checked", model=name, version=result.version,
                        held_back=result.held_back)
        else:
            self._event("checked", model=name, version=result.version)
        self._update_status()

    async def _gc_loop(self) -> None:
        assert self.store and self.events
        while True:
            await self._published.wait()
            self._published = trio.Event()
            await trio.sleep(GC_DELAY)
            try:
                async with self.gate.collecting():
                    report = await trio.to_thread.run_sync(functools.partial(
                        self.store.gc, min_age=GC_MIN_AGE, sources=self.config.manifest_urls))
            except LockedError as exc:
                log.warning("gc skipped: %s", exc)
                continue
            except ShardsyncError as exc:
                log.error("gc failed, will try after the next publish: %s", exc)
                continue
            self.store_stats = None
            if report.objects_removed:
                log.info("gc: freed %d bytes in %d object(s)", report.bytes_freed,
                         report.objects_removed)
                self._event("gc", bytes_freed=report.bytes_freed,
                            objects_removed=report.objects_removed)

    def _making_progress(self) -> bool:
        """The watchdog's health check: no sync stuck for STALL_LIMIT (logged if one is)."""
        stalled = self.scheduler.stalled(STALL_LIMIT) if self.scheduler else []
        if stalled:
            log.error("sync of %s made no progress for %d s; not petting the watchdog",
                      ", ".join(stalled), STALL_LIMIT)
        return not stalled

    def _update_status(self) -> None:
        models = self.scheduler.models.values() if self.scheduler else ()
        counts: dict[str, int] = {}
        for st in models:
            counts[st.progress.state] = counts.get(st.progress.state, 0) + 1
        text = f"{sum(counts.values())} model(s): " + ", ".join(
            f"{n} {s}" for s, n in sorted(counts.items()))
        if self.config_error:
            text += "; config error, running the previous config"
        self.notifier.status(text)
