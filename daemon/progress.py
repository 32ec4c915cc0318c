"""What `shardsync sync` shows while it works.

On a terminal: one row per model, redrawn in place a few times a second, each cut to
the terminal's width as it is at that redraw (a row that wrapped would push the next
redraw's cursor arithmetic off by a line and leave stale rows behind). A row holds
the state, a bar, the bytes, the *current* rate (over the last :data:`RATE_WINDOW`
seconds, so it falls to zero when a model stops receiving instead of decaying like
an average since the start) and the ETA at that rate; a model waiting for a download
slot says so rather than showing 0 B/s. Log records emitted while the rows are drawn
go above them: the stderr handler of the root logger is routed through the display
while it runs, which clears the rows, writes the record and draws them again.

Otherwise (a log file, CI, a pipe): one plain line per model state change, no escape
codes, so nothing is lost to carriage returns. States are sampled at the redraw rate,
so one shorter than a redraw (a quick ``checking`` or ``publishing``) may not get a
line; the result line at the end says what the sync did either way.

Written here rather than with rich: rich.progress costs ~50 ms of imports (measured
with ``-X importtime``, about what the whole of a warm `shardsync sync` spends on
start-up, docs/performance.md) and two more dependencies, for rows this module draws
in a page of code; and its log routing wraps ``sys.stderr``, which logging's handler
does not write through (it keeps the stream it was given), so it would need the same
handler swap as here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TextIO

import trio

from .sync import Progress, SyncResult
from .units import format_bytes

__all__ = ["RATE_WINDOW", "REDRAW_HZ", "ProgressDisplay", "fit_row", "result_line"]

#: Redraws per second: smooth enough to read, cheap enough not to slow a download.
REDRAW_HZ = 5
#: Seconds of history the shown rate is measured over: long enough to smooth the
#: bursts of a dripping or congested link, short enough that a stall shows within it.
RATE_WINDOW = 5.0
#: The terminal size assumed when the stream cannot say (it is not a terminal after all).
_FALLBACK_SIZE = os.terminal_size((80, 24))
#: A bar narrower than this tells nothing; the row drops it instead.
_MIN_BAR = 8
#: A wider bar only spreads the same information.
_MAX_BAR = 30
#: What the display calls each state: "idle" after a sync means it is done.
_LABELS = {"idle": "done", "error": "failed", "queued": "queued"}

Size = Callable[[], os.terminal_size]


def result_line(r: SyncResult) -> str:
    """One line saying what a sync did, for logs and the end of a terminal run."""
    if r.error is not None:
        return f"FAILED  {r.name}: {r.error}"
    what = f"published {r.version}" if r.changed else f"up to date ({r.version})"
    return (f"ok      {r.name}: {what}; {r.files_fetched} fetched, {r.files_reused} reused, "
            f"{format_bytes(r.received)} received")


def format_eta(seconds: float) -> str:
    """``65`` -> ``"1m05s"``: short enough for a row at 80 columns."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, a cut marked with ``~``."""
    if len(text) <= width:
        return text
    return text[:max(0, width - 1)] + "~" if width > 0 else ""


def _bytes_pair(done: int, total: int) -> str:
    """``"1.5/4.0 MiB"``, or ``"512.0 KiB/4.0 MiB"`` when the units differ."""
    a, b = format_bytes(done), format_bytes(total)
    unit_a, unit_b = a.rpartition(" ")[2], b.rpartition(" ")[2]
    return f"{a.rpartition(' ')[0]}/{b}" if unit_a == unit_b else f"{a}/{b}"


def fit_row(name: str, name_width: int, state: str, p: Progress, rate: float | None,
            width: int) -> str:
    """One model's row in at most ``width`` characters, never more.

    ``rate`` is bytes/s now (None: not measured yet). Fields are taken in order of
    what they tell (percentage, rate, ETA, a bar of at least :data:`_MIN_BAR`, bytes,
    files) while they fit, and shown in reading order; the bar then takes the room
    left, up to :data:`_MAX_BAR`. Names are cut to a quarter of the width (they are
    the row's key, not its news), and the whole row is cut last.
    """
    name_width = min(name_width, max(8, width // 4))
    head = f"{_cut(name, name_width):<{name_width}} {state:<11}"
    total = p.bytes_total
    frac = min(1.0, p.bytes_done / total) if total else 0.0
    fields: dict[str, str] = {}
    if state == "queued":
        fields["note"] = "waiting for a download slot"
    elif state in ("done", "failed"):
        fields["files"] = f"{p.files_done}/{p.files_total} files"
        if state == "done":
            fields["received"] = f"{format_bytes(p.received)} received"
    else:
        # Padded to their usual widths, so that rows' columns (and bars) line up.
        fields["pct"] = f"{frac * 100:3.0f}%"
        if state == "downloading" and rate is not None:
            fields["rate"] = f"{format_bytes(rate)}/s".rjust(12)
            if total > p.bytes_done:
                fields["eta"] = ("ETA " + format_eta((total - p.bytes_done) / rate)
                                 if rate > 0 else "ETA -").ljust(10)
        fields["bar"] = ""
        fields["bytes"] = _bytes_pair(p.bytes_done, total).rjust(17)
        fields["files"] = f"{p.files_done}/{p.files_total} files"
    used, chosen = len(head), set()
    for key, text in fields.items():  # in order of importance
        cost = 1 + (_MIN_BAR + 2 if key == "bar" else len(text))
        if used + cost <= width:
            chosen.add(key)
            used += cost
    if "bar" in chosen:
        bar_width = min(_MAX_BAR, _MIN_BAR + width - used)
        fill = int(frac * bar_width)
        fields["bar"] = "[" + "#" * fill + "-" * (bar_width - fill) + "]"
    order = ("bar", "pct", "bytes", "rate", "eta", "files", "received", "note")
    row = " ".join([head, *(fields[k] for k in order if k in chosen)])
    return _cut(re.sub(" +$", "", row), width)


class _Rate:
    """Bytes/s over the last :data:`RATE_WINDOW` seconds of (time, bytes received) samples."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self._started: float | None = None

    def update(self, now: float, p: Progress) -> float | None:
        """Add a sample; the rate, or None before two samples span any time."""
        if p.started != self._started or (self._samples and p.received < self._samples[-1][1]):
            self._samples.clear()  # the Progress was reset for a new sync
            self._started = p.started
        self._samples.append((now, p.received))
        # Keep the newest sample at or before the window's start, so the window is full.
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW:
            self._samples.popleft()
        t0, r0 = self._samples[0]
        if now <= t0:
            return None
        return (p.received - r0) / (now - t0)


class _LogStream:
    """What logging's stderr handler writes to while the display runs: whole lines go
    above the rows (see :meth:`ProgressDisplay.write_above`)."""

    def __init__(self, display: ProgressDisplay) -> None:
        self._display = display
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            self._display.write_above(lines + "\n")
        return len(text)

    def flush(self) -> None:
        pass  # every whole line is written (and flushed) at once; a partial one waits


class ProgressDisplay:
    """Shows per-model progress on ``stream`` until cancelled (see the module docstring).

    ``terminal`` defaults to ``stream.isatty()``; ``size`` (the terminal's size, read at
    every redraw) and ``clock`` (for the rate) are there for tests.
    """

    def __init__(self, models: dict[str, Progress], stream: TextIO | None = None, *,
                 terminal: bool | None = None, size: Size | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.models = models
        self.stream = stream = sys.stderr if stream is None else stream
        self.terminal = stream.isatty() if terminal is None else terminal
        self._size = size or self._stream_size
        self._clock = clock
        self._rates = {n: _Rate() for n in models}
        self._seen_busy: set[str] = set()
        self._shown: dict[str, str] = {}  # plain mode: the state last printed per model
        self._drawn = 0  # rows on screen below the cursor's line, to go back over
        # Log records may come from worker threads (trio.to_thread) mid-redraw.
        self._lock = threading.Lock()

    async def run(self) -> None:
        """Redraw (or print state changes) until cancelled, then show the final state."""
        with self._logging_above() if self.terminal else nullcontext():
            try:
                while True:
                    self.draw()
                    await trio.sleep(1 / REDRAW_HZ)
            finally:
                self.draw()

    def draw(self) -> None:
        """One redraw on a terminal; on anything else, a line per state changed since."""
        with self._lock:
            if self.terminal:
                self._redraw()
            else:
                self._print_changes()
            self.stream.flush()

    def rows(self) -> list[str]:
        """The rows a redraw would show now, each within the terminal's width."""
        size = self._size()
        width = max(1, size.columns - 1)  # the last column: some terminals wrap at once
        now = self._clock()
        name_width = max((len(n) for n in self.models), default=0)
        rows = [fit_row(name, name_width, self._label(name, p),
                        p, self._rates[name].update(now, p), width)
                for name, p in self.models.items()]
        height = max(2, size.lines - 1)  # cursor-up cannot go above the screen's top
        if len(rows) > height:
            more = len(rows) - (height - 1)
            rows = [*rows[:height - 1], _cut(f"... and {more} more", width)]
        return rows

    def write_above(self, text: str) -> None:
        """Write ``text`` (whole lines) above the rows: clear them, write, draw them again."""
        with self._lock:
            self._clear()
            self.stream.write(text)
            self._redraw()
            self.stream.flush()

    def _label(self, name: str, p: Progress) -> str:
        if p.state != "idle":
            self._seen_busy.add(name)
        elif name not in self._seen_busy:
            return "idle"
        return _LABELS.get(p.state, p.state)

    def _clear(self) -> None:
        if self._drawn:
            # To the start of the first row, then erase everything below.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _redraw(self) -> None:
        rows = self.rows()
        self._clear()
        self.stream.write("".join(row + "\n" for row in rows))
        self._drawn = len(rows)

    def _print_changes(self) -> None:
        for name, p in self.models.items():
            state = self._label(name, p)
            if state == "idle":
                continue  # not started yet: nothing to report
            if self._shown.get(name) != state:
                self._shown[name] = state
                self.stream.write(_plain_line(name, state, p) + "\n")

    def _stream_size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            return _FALLBACK_SIZE

    @contextmanager
    def _logging_above(self) -> Iterator[None]:
        """Route the root logger's handlers that write to our stream through the display."""
        swapped = []
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is self.stream:
                swapped.append((h, h.setStream(_LogStream(self))))
        try:
            yield
        finally:
            for h, old in swapped:
                h.setStream(old)


def _plain_line(name: str, state: str, p: Progress) -> str:
    """A state change as one plain line: ``a: downloading (3 files, 1.2 MiB)``."""
    if state == "queued":
        return f"{name}: queued, waiting for a download slot"
    if state in ("downloading", "done", "failed") and p.files_total:
        return (f"{name}: {state} ({p.files_done}/{p.files_total} files, "
                f"{format_bytes(p.bytes_done)}/{format_bytes(p.bytes_total)})")
    return f"{name}: {state}"
