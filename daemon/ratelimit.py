"""Bandwidth limits: ``max_rate`` as token buckets that body bytes are paid from.

A metered link is billed by the byte and shared with the kiosk's own traffic, so the
operator caps what shardsync takes: ``max_rate`` for all downloads together, and per
``[[origin]]`` for the downloads from it (docs/design.md, "Additions for the field").
:class:`RateLimits` holds one :class:`TokenBucket` for the global limit and one per
origin prefix with a limit; :meth:`RateLimits.buckets_for` picks the ones a URL pays
into (the global one, and its origin's by :meth:`.config.Config.origin_for`).

How a body is paid for (:meth:`.fetch.Fetcher._body`): a chunk is received, then its
bytes are taken from each bucket. A bucket may go into debt (a read is often larger
than the bucket holds, httpcore reads up to 512 KiB); the taker then sleeps until the
debt is paid. Concurrent takers share one bucket by adding to the same debt, so each
waits its share and the sum stays at the rate, however many downloads run. Debt is
paid after the last chunk too: a whole download never beats the rate by more than
the bucket's capacity, which is what keeps a download of a few seconds within 10 %.

Only body bytes are counted: a 304 has none, so conditional checks are never slowed.
TCP flow control does the rest: while shardsync sleeps, the kernel's receive buffer
fills and the origin stops sending, so the link carries about the rate too (plus one
buffer's worth at the start).

A cancel during a wait leaves the debt in the bucket: the bytes did arrive. A reload
that changes a rate applies to the waits already under way (:meth:`TokenBucket.wait_for`
wakes on it), so lifting a limit frees a download at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .config import Config

__all__ = ["BURST_SECONDS", "RateLimits", "TokenBucket", "take"]

#: The bucket holds this many seconds of its rate: the burst an idle bucket allows.
#: Small, because the burst is what a download of a few seconds gains over the rate
#: (0.1 s over 4 s is 2.5 %, inside the 10 % the limit promises); a read larger than
#: that is still taken whole, as debt.
BURST_SECONDS = 0.1


class TokenBucket:
    """``rate`` bytes per second, holding at most ``rate * BURST_SECONDS``.

    Kept as two byte counts rather than a level: ``charged`` (every byte taken) and
    ``drained`` (what the rate has paid off, never more than ``charged`` plus the
    capacity: an idle bucket stays full, no fuller). A taker's ticket is ``charged``
    after its own bytes; it may go once ``drained`` reaches it. So a change of
    ``rate`` (a reload) applies to the debt of every sleeper at once, each still
    waiting only for the bytes charged up to its own, and a bucket that is
    :meth:`retire`-d (its limit removed) lets them all go.

    Made and used inside ``trio.run`` (it reads trio's clock, a test's MockClock too).
    """

    def __init__(self, rate: int) -> None:
        self._rate = _check_rate(rate)
        self._charged = 0.0
        self._drained = self.capacity  # an idle bucket is full
        self._at = trio.current_time()
        self._retired = False
        self._changed = trio.Event()

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, value: int) -> None:
        self._settle()  # what the old rate paid off until now
        self._rate = _check_rate(value)
        self._drained = min(self._drained, self._charged + self.capacity)
        self._wake()

    @property
    def capacity(self) -> float:
        return self._rate * BURST_SECONDS

    def retire(self) -> None:
        """No limit any more: every sleeper goes at once, and no one waits from now on."""
        self._retired = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _settle(self) -> None:
        now = trio.current_time()
        self._drained = min(self._charged + self.capacity,
                            self._drained + (now - self._at) * self._rate)
        self._at = now

    def charge(self, n: int) -> float:
        """Take ``n`` bytes now; return the ticket to :meth:`wait_for`."""
        self._settle()
        self._charged += n
        return self._charged

    def delay(self, ticket: float) -> float:
        """Seconds until ``ticket`` is paid off at the current rate (0.0: it is)."""
        if self._retired:
            return 0.0
        self._settle()
        return max(0.0, (ticket - self._drained) / self._rate)

    async def wait_for(self, ticket: float) -> None:
        """Sleep until ``ticket`` is paid off, following rate changes while asleep."""
        while (delay := self.delay(ticket)) > 0:
            changed = self._changed
            with trio.move_on_after(delay):
                await changed.wait()

    async def take(self, n: int) -> float:
        """Pay ``n`` bytes and sleep until out of debt; the seconds slept (see :func:`take`)."""
        return await take((self,), n)


async def take(buckets: tuple[TokenBucket, ...], n: int) -> float:
    """Pay ``n`` bytes into every one of ``buckets`` at once, then sleep until all have
    paid them off. Returns the seconds slept (0.0 with no debt: then no checkpoint), so
    the caller can leave the wait out of its own measures.

    At once, not one after the other: charging each only after the last one's wait
    would add the waits (a download under a global 1 MiB/s and an origin's 256 KiB/s
    would get less than 256 KiB/s), while each bucket drains during the others' waits.
    """
    tickets = [(b, b.charge(n)) for b in buckets]
    if all(b.delay(t) <= 0 for b, t in tickets):
        return 0.0
    start = trio.current_time()
    for b, t in tickets:
        await b.wait_for(t)
    return trio.current_time() - start


class RateLimits:
    """The buckets of one config: the global ``max_rate`` and each origin's.

    :meth:`configure` applies a (re)loaded config: a bucket whose limit stays keeps its
    level (a reload does not hand out a fresh burst), one whose limit changes takes the
    new rate at once, one whose limit went to 0 is dropped.
    """

    def __init__(self) -> None:
        self._global: TokenBucket | None = None
        self._origins: dict[str, TokenBucket] = {}
        self._origin_of: Callable[[str], str | None] = lambda url: None

    def apply(self, config: Config) -> None:
        """Take ``config``'s ``max_rate`` and its ``[[origin]]`` blocks' (start, reload).

        A URL pays into the bucket of the origin :meth:`.config.Config.origin_for` picks
        (the longest prefix), if that one has a limit.
        """
        def origin_of(url: str) -> str | None:
            o = config.origin_for(url)
            return o.prefix if o is not None else None

        self.configure(config.max_rate, {o.prefix: o.max_rate for o in config.origins},
                       origin_of)

    def configure(self, max_rate: int, origin_rates: dict[str, int],
                  origin_of: Callable[[str], str | None]) -> None:
        """``max_rate`` (0: none) for all; ``origin_rates``: prefix -> bytes/s (0: none);
        ``origin_of(url)``: the prefix of the ``[[origin]]`` that applies to ``url``."""
        self._global = self._bucket(self._global, max_rate)
        buckets = {}
        for prefix, rate in origin_rates.items():
            bucket = self._bucket(self._origins.pop(prefix, None), rate)
            if bucket is not None:
                buckets[prefix] = bucket
        for gone in self._origins.values():  # blocks removed from the config
            gone.retire()
        self._origins = buckets
        self._origin_of = origin_of

    def _bucket(self, old: TokenBucket | None, rate: int) -> TokenBucket | None:
        if rate <= 0:
            if old is not None:
                old.retire()
            return None
        if old is None:
            return TokenBucket(rate)
        old.rate = rate
        return old

    def buckets_for(self, url: str) -> tuple[TokenBucket, ...]:
        """The buckets a body from ``url`` pays into: the global one and its origin's."""
        out = []
        if self._global is not None:
            out.append(self._global)
        if self._origins:
            prefix = self._origin_of(url)
            if prefix is not None and prefix in self._origins:
                out.append(self._origins[prefix])
        return tuple(out)


def _check_rate(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a rate must be a positive integer of bytes/s, not {value!r}")
    return value
