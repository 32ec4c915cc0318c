"""One task per model, checking every ``interval`` (±10 %), backing off after failures.

The :class:`Scheduler` owns the model tasks and nothing else: the service tells it
which models exist (:meth:`Scheduler.apply`), and it starts, stops and restarts
their tasks. All models share the service's :class:`~shardsync.daemon.sync.Syncer`,
so the download limit (``concurrency``) is global and a shard two models need is
fetched once.

A failure never stalls other models: each model has its own task and its own
backoff, which doubles from :data:`BACKOFF_BASE` up to the model's interval.
gc runs between syncs, never during one (:class:`Gate`): a file committed by a sync
but not yet recorded in a version would look unreferenced to gc.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from shardsync.store import ShardsyncError

from .config import ModelConfig
from .sync import Progress, Syncer, SyncResult

__all__ = ["BACKOFF_BASE", "JITTER", "Gate", "ModelState", "Scheduler", "backoff", "jittered"]

log = logging.getLogger(__name__)

#: ±10 % around every interval: a fleet restarted together must not hit the origin
#: together on every check forever after.
JITTER = 0.10

#: First retry after a failure; doubles per failure, capped at the model's interval.
#: Short enough that a blip heals in seconds, long enough not to hammer a broken origin.
BACKOFF_BASE = 10.0

#: Doublings after which the backoff stops growing: 10 s * 2**40 is beyond any interval.
_MAX_DOUBLINGS = 40


@dataclass
class ModelState:
    """What the service knows about one model (read by the status socket and metrics)."""

    config: ModelConfig
    progress: Progress = field(default_factory=Progress)
    last_check: float | None = None
    last_success: float | None = None
    next_check: float | None = None
    last_error: str | None = None
    failures: int = 0          # consecutive
    errors_total: int = 0
    bytes_total: int = 0       # body bytes downloaded, all syncs
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # What Scheduler.stalled saw last (state, bytes, files, check) and since when (trio time).
    progress_mark: tuple[object, ...] | None = field(default=None, repr=False)
    progress_since: float = field(default=0.0, repr=False)


class Gate:
    """Many syncs at once, or gc alone: a readers-writer lock for trio, writer-preferring.

    Hold it with ``async with gate.syncing():`` around a sync and ``async with
    gate.collecting():`` around gc (or anything else that must see no sync in
    progress, such as unpublishing a model). A gc that waits for running syncs
    already holds back new ones, so a busy scheduler cannot starve it. Leaving never
    blocks, and a task cancelled at any point (waiting to enter, or inside) leaves
    the gate as if it had never entered.
    """

    def __init__(self) -> None:
        self._syncs = 0
        self._gc = False
        self._changed = trio.Event()

    @property
    def syncs(self) -> int:
        """Syncs inside the gate now."""
        return self._syncs

    @property
    def collecting_now(self) -> bool:
        """True while a gc holds the gate or waits for the syncs inside to finish."""
        return self._gc

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def syncing(self) -> AsyncIterator[None]:
        """Enter as a sync: waits while a gc holds or wants the gate."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._gc:
            await self._changed.wait()
        self._syncs += 1
        try:
            yield
        finally:
            self._syncs -= 1
            self._notify()

    @asynccontextmanager
    async def collecting(self) -> AsyncIterator[None]:
        """Enter as gc: waits for another gc, then for every sync inside to finish."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._gc:
            await self._changed.wait()
        self._gc = True
        try:
            while self._syncs:
                await self._changed.wait()
            yield
        finally:
            self._gc = False
            self._notify()


def jittered(seconds: float) -> float:
    """``seconds`` ±:data:`JITTER`, uniformly."""
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


def backoff(failures: int, interval: float) -> float:
    """The wait (before jitter) after ``failures`` consecutive failures: doubling from
    :data:`BACKOFF_BASE`, never above ``interval``."""
    # The exponent is bounded: 2 ** 1100 is an int too large for a float, and a model that
    # fails for weeks reaches that many failures.
    return min(interval, BACKOFF_BASE * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))


class Scheduler:
    """Runs one task per model in ``nursery``; ``on_result`` hears every finished sync."""

    def __init__(
        self,
        syncer: Syncer,
        gate: Gate,
        on_result: Callable[[ModelState, SyncResult], None],
    ) -> None:
        self.syncer = syncer
        self.gate = gate
        self.on_result = on_result
        self.models: dict[str, ModelState] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Host the model tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def apply(self, models: tuple[ModelConfig, ...]) -> tuple[list[str], list[str], list[str]]:
        """Make the running models match ``models``; return (added, removed, changed) names.

        Added models start (and check at once), removed ones stop (a download in
        progress is cancelled, leaving its partial for resume), changed ones (URL or
        interval) restart; unchanged ones carry on undisturbed.
        """
        assert self._nursery is not None, "Scheduler.run must be started first"
        wanted = {m.name: m for m in models}
        added, removed, changed = [], [], []
        for name in list(self.models):
            if name not in wanted:
                self.models.pop(name).scope.cancel()
                removed.append(name)
            elif self.models[name].config != wanted[name]:
                self.models.pop(name).scope.cancel()
                changed.append(name)
        for name, model in wanted.items():
            if name not in self.models:
                state = ModelState(model)
                self.models[name] = state
                self._nursery.start_soon(self._loop, state, name=f"model {name}")
                if name not in changed:
                    added.append(name)
        return added, removed, changed

    def wake(self, name: str | None = None) -> list[str]:
        """Check ``name`` (or every model) now; returns the names woken."""
        names = [name] if name else list(self.models)
        for n in names:
            self.models[n].wake.set()
        return names

    def stalled(self, limit: float) -> list[str]:
        """The busy models, if none of them has moved for more than ``limit`` seconds.

        Busy means queued, checking, downloading or publishing; moving means a change of
        state, of bytes received, of files done, or a new check. One busy model that
        moves is enough to say the scheduler makes progress: a model whose files wait
        for a download slot that others hold (``concurrency``) is waiting its turn, not
        stuck. Idle and failed models never count: waiting for the next check is not a
        stall, and neither is waiting for a download window (``waiting``). Progress is
        sampled when this is called (the watchdog calls it every few seconds), so a
        stall is seen at most one call late. Returns [] when the scheduler makes
        progress.
        """
        now = trio.current_time()
        busy = []
        for name, st in self.models.items():
            p = st.progress
            mark = (p.state, p.received, p.files_done, st.last_check)
            if mark != st.progress_mark:
                st.progress_mark, st.progress_since = mark, now
            if p.state not in ("idle", "error", "waiting"):  # waiting: for a download window
                busy.append((name, now - st.progress_since))
        if busy and all(still > limit for _, still in busy):
            return [name for name, _ in busy]
        return []

    async def _loop(self, state: ModelState) -> None:
        name = state.config.name
        with state.scope:
            delay = 0.0  # a model the service just learned of is checked at once
            while True:
                state.next_check = time.time() + delay
                with trio.move_on_after(delay):
                    await state.wake.wait()
                state.wake = trio.Event()
                try:
                    async with self.gate.syncing():
                        state.last_check = time.time()
                        result = await self.syncer.sync(state.config, state.progress)
                except Exception as exc:
                    # A bug, not an origin's fault (Syncer.sync returns those in the result).
                    # This model backs off like any failure; the service and the other
                    # models carry on instead of dying with it.
                    log.exception("model %s: the sync failed unexpectedly", name)
                    state.progress.state = "error"
                    result = SyncResult(name, error=ShardsyncError(
                        f"internal error: {type(exc).__name__}: {exc}", model=name))
                state.bytes_total += result.received
                interval = state.config.interval
                if result.ok:
                    state.failures = 0
                    state.last_success = time.time()
                    state.last_error = None
                    delay = jittered(interval)
                else:
                    state.failures += 1
                    state.errors_total += 1
                    state.last_error = str(result.error)
                    delay = jittered(backoff(state.failures, interval))
                self.on_result(state, result)
