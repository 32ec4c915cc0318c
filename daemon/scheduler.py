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
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .config import ModelConfig
from .sync import Progress, Syncer, SyncResult

__all__ = ["BACKOFF_BASE", "JITTER", "Gate", "ModelState", "Scheduler"]

log = logging.getLogger(__name__)

#: ±10 % around every interval: a fleet restarted together must not hit the origin
#: together on every check forever after.
JITTER = 0.10

#: First retry after a failure; doubles per failure, capped at the model's interval.
#: Short enough that a blip heals in seconds, long enough not to hammer a broken origin.
BACKOFF_BASE = 10.0


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
    last_activity: float = field(default_factory=time.monotonic)


class Gate:
    """Many syncs at once, or gc alone (a readers-writer lock for trio, writer-preferring)."""

    def __init__(self) -> None:
        self._syncs = 0
        self._gc = False
        self._changed = trio.Condition()

    async def enter_sync(self) -> None:
        async with self._changed:
            while self._gc:
                await self._changed.wait()
            self._syncs += 1

    async def leave_sync(self) -> None:
        async with self._changed:
            self._syncs -= 1
            self._changed.notify_all()

    async def enter_gc(self) -> None:
        async with self._changed:
            while self._gc:
                await self._changed.wait()
            self._gc = True
            while self._syncs:
                await self._changed.wait()

    async def leave_gc(self) -> None:
        async with self._changed:
            self._gc = False
            self._changed.notify_all()


def jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


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

    async def _loop(self, state: ModelState) -> None:
        with state.scope:
            delay = 0.0  # a model the service just learned of is checked at once
            while True:
                state.next_check = time.time() + delay
                with trio.move_on_after(delay):
                    await state.wake.wait()
                state.wake = trio.Event()
                await self.gate.enter_sync()
                try:
                    state.last_check = time.time()
                    result = await self.syncer.sync(state.config, state.progress)
                finally:
                    with trio.CancelScope(shield=True):
                        await self.gate.leave_sync()
                state.last_activity = time.monotonic()
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
                    delay = jittered(min(interval, BACKOFF_BASE * 2 ** (state.failures - 1)))
                self.on_result(state, result)
