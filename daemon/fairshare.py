"""Download slots shared fairly between models: round-robin, not first come first served.

Every request of a sync (a model's manifest, then each of its files) takes a slot of
one :class:`FairLimiter` shared by all models, ``concurrency`` slots in all. A FIFO
limiter (``trio.CapacityLimiter``) serves requests in the order they were asked: a
160 MiB model's 40 shard requests, queued a moment before a 526 KiB model's three,
all went first, and the small model was published last.

The policy here: each model has its own FIFO queue, and a freed slot goes to the next
model in turn that is waiting (round-robin over models). A model that starts behind
a big one gets every second slot (with two models waiting), so a small model is
published after a handful of files, whatever the big one has queued.

Why round-robin, and not "the model with the fewest bytes left first": that would
publish a small model even sooner, but it starves. A big model gets no slot at all
while smaller ones keep arriving (the service checks every model on its own
schedule, so on a kiosk with many small models they always do), and its
bytes-left are not even known until its manifest, itself under the limiter, has
been read. Round-robin needs to know nothing about sizes and bounds every wait: a
waiting model gets a slot within one grant per other waiting model.

Cancellation: a waiter that is cancelled leaves its queue and takes no slot; one
cancelled just as a slot was handed to it gives that slot on to the next waiter.
A slot is always given back when its ``async with`` block ends, however it ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

import trio

__all__ = ["FairLimiter"]


@dataclass(eq=False)
class _Waiter:
    key: str
    granted: bool = False
    event: trio.Event = field(default_factory=trio.Event)


class FairLimiter:
    """``total_tokens`` slots, handed to waiting keys (model names) in turn.

    ``total_tokens`` may be changed at any time (a reload of ``concurrency``): raising
    it hands out slots at once; lowering it takes none back, and slots are handed out
    again only once fewer than the new total are in use.
    """

    def __init__(self, total_tokens: int) -> None:
        self._total = _check_total(total_tokens)
        self._in_use = 0
        # Keys with waiters, in the order they are to be served; each key's own queue.
        self._turns: dict[str, deque[_Waiter]] = {}

    @property
    def total_tokens(self) -> int:
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._total = _check_total(value)
        self._grant()

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self._in_use

    def waiting(self, key: str | None = None) -> int:
        """Tasks waiting for a slot (for ``key`` only, if given)."""
        if key is not None:
            return len(self._turns.get(key, ()))
        return sum(len(q) for q in self._turns.values())

    def slot(self, key: str) -> _Slot:
        """``async with limiter.slot(key):`` holds one slot for ``key`` while the block
        runs, waiting for the key's turn if none is free. Entering is a checkpoint, as
        with trio's own limiters."""
        return _Slot(self, key)

    async def _acquire(self, key: str) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._in_use < self._total:  # then nobody waits: _grant() would have served them
            self._in_use += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(key)
        self._turns.setdefault(key, deque()).append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._release()  # handed to us as we were cancelled: pass it on
            else:
                queue = self._turns[key]
                queue.remove(waiter)
                if not queue:
                    del self._turns[key]
            raise

    def _release(self) -> None:
        self._in_use -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiters, one key at a time in turn."""
        while self._turns and self._in_use < self._total:
            key = next(iter(self._turns))
            queue = self._turns.pop(key)
            waiter = queue.popleft()
            if queue:
                self._turns[key] = queue  # back in line, behind every other waiting key
            waiter.granted = True
            self._in_use += 1
            waiter.event.set()


class _Slot:
    """One use of a slot: a plain class, not a generator context manager, because a
    sync takes one per request (1100 in a warm re-check of 100 models)."""

    __slots__ = ("_key", "_limiter")

    def __init__(self, limiter: FairLimiter, key: str) -> None:
        self._limiter, self._key = limiter, key

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._key)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._limiter._release()


def _check_total(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"total_tokens must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"total_tokens must be at least 1, not {value!r}")
    return value
