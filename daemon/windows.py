"""Download windows: the local times when bodies may be downloaded (``download_windows``).

On a metered link the night is cheap: ``download_windows = ["01:00-05:00"]`` keeps
shard bodies to those hours (docs/design.md, "Additions for the field"). Checks go on
at any time: a manifest is read and every shard is asked for conditionally, so a 304
costs nothing, and a model whose new version needs bytes waits for the next window
(status ``waiting``, with the window and when it opens).

Decisions:

* A window is ``"HH:MM-HH:MM"`` in local time (what an operator reads on the wall), the
  start inside it, the end not; one whose end is earlier than its start wraps midnight
  (``"22:00-06:00"``). ``"24:00"`` may end one. Start equal to end is refused: it reads
  as "never" and as "always" alike. An empty list means always.
* Where a window closes mid-download, the file in progress finishes, and the next
  file waits: stopping at a file boundary leaves no partial to resume, and a shard is a
  few MiB, seconds to minutes over the window's end. The check is made as each file
  is about to be asked for (:meth:`.sync.Syncer._fetch`).
* A conditional check that comes back 200 outside a window (the shard changed) is
  closed without reading its body; the file waits, and asks again in the window.
  At most what the origin pushed into the socket before the close crosses the link.
* The time comes from ``clock`` (a function returning an aware local datetime), so
  tests can ask about any hour; the service uses the wall clock. Daylight saving:
  whether a window is open is read from the wall clock's ``HH:MM`` every time, so
  bodies start at the right local time; only the ``next`` that status shows is
  computed in today's UTC offset, an hour off on the night of a change.

trio is imported only by :class:`DownloadWindows`, which waits: the config
(:mod:`.config`) parses windows here, and ``shardsync status`` loads no trio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

__all__ = ["DownloadWindows", "Window", "local_now", "parse_windows"]

_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_DAY = 24 * 60

#: Longest sleep before the time is read again: the wall clock may be set (NTP at boot
#: on a kiosk without an RTC) or jump at a daylight-saving change while we sleep.
_RECHECK = 60.0


def local_now() -> datetime:
    """The wall clock, as an aware datetime in the local time zone."""
    return datetime.now().astimezone()


@dataclass(frozen=True)
class Window:
    """``start``-``end`` in minutes after local midnight; ``end < start`` wraps midnight."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def parse_windows(value: Any) -> tuple[Window, ...]:
    """``["01:00-05:00", "22:00-06:00"]`` as windows; ValueError saying why otherwise."""
    if not isinstance(value, list):
        raise ValueError(f'must be a list of "HH:MM-HH:MM" strings, not {value!r}')
    out = []
    for item in value:
        m = _WINDOW.fullmatch(item) if isinstance(item, str) else None
        if m is None:
            raise ValueError(f'{item!r} is not a window like "01:00-05:00" (local time)')
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise ValueError(f"{item!r}: hours go from 00 to 23 (24:00 only as an end), "
                             "minutes from 00 to 59")
        window = Window(h1 * 60 + m1, (h2 * 60 + m2) % _DAY)
        if window.start == window.end:
            raise ValueError(f"{item!r} starts where it ends: write no windows at all "
                             "for always")
        out.append(window)
    return tuple(out)


@dataclass(frozen=True)
class Closed:
    """Outside every window: the one that opens next, and when (an aware datetime)."""

    window: Window
    opens: datetime

    def to_json(self) -> dict[str, Any]:
        """What status shows of a model waiting for it (the API adds ``next_at``)."""
        return {"window": str(self.window), "next": int(self.opens.timestamp())}


class DownloadWindows:
    """The configured windows, read against ``clock``; :meth:`configure` on reload."""

    def __init__(self, windows: Sequence[Window] = (), *,
                 clock: Callable[[], datetime] = local_now) -> None:
        self._clock = clock
        import trio

        self._windows = tuple(windows)
        self._changed: trio.Event = trio.Event()

    def configure(self, windows: Sequence[Window]) -> None:
        """New windows (a reload): anyone waiting looks again at once."""
        import trio

        self._windows = tuple(windows)
        self._changed.set()
        self._changed = trio.Event()

    def closed(self) -> Closed | None:
        """None while bodies may be downloaded; else what opens next."""
        if not self._windows:
            return None
        return closed_at(self._windows, self._clock())

    async def wait_open(self, on_wait: Callable[[Closed], None]) -> None:
        """Return once a window is open (at once if one is); ``on_wait`` is called with
        what it waits for, each time that changes (a reload, a window passed)."""
        import trio

        shown = None
        while (closed := self.closed()) is not None:
            if closed != shown:
                on_wait(closed)
                shown = closed
            delay = (closed.opens - self._clock()).total_seconds()
            with trio.move_on_after(min(max(delay, 0.0), _RECHECK)):
                await self._changed.wait()


def closed_at(windows: Sequence[Window], now: datetime) -> Closed | None:
    """None if ``now`` (a local datetime) is inside one of ``windows``; else the window
    that opens first after it, and when."""
    minute = now.hour * 60 + now.minute
    if any(w.contains(minute) for w in windows):
        return None
    best: Closed | None = None
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for w in windows:
        for days in (0, 1):
            opens = midnight + timedelta(days=days, minutes=w.start)
            if opens > now:
                if best is None or opens < best.opens:
                    best = Closed(w, opens)
                break
    assert best is not None  # some window starts within a day
    return best


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
