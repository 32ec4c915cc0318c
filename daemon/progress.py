"""What `shardsync sync` shows while it works.

On a terminal: one line per model, redrawn in place a few times a second, with a
bar, bytes, rate and ETA. Otherwise (a log file, CI, systemd): one plain line per
finished model, so nothing is lost to carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import trio

from .sync import Progress, SyncResult
from .units import format_bytes

__all__ = ["ProgressDisplay", "result_line"]

#: Redraws per second: smooth enough to read, cheap enough not to slow a download.
REDRAW_HZ = 5

_BAR = 24  # characters of the bar


def result_line(r: SyncResult) -> str:
    """One line saying what a sync did, for logs and the end of a terminal run."""
    if r.error is not None:
        return f"FAILED  {r.name}: {r.error}"
    what = f"published {r.version}" if r.changed else f"up to date ({r.version})"
    return (f"ok      {r.name}: {what}; {r.files_fetched} fetched, {r.files_reused} reused, "
            f"{format_bytes(r.received)} received")


class ProgressDisplay:
    """Draws per-model progress on ``stream`` (a terminal) until cancelled."""

    def __init__(self, models: dict[str, Progress], stream: TextIO = sys.stderr) -> None:
        self.models = models
        self.stream = stream
        self._drawn = 0

    async def run(self) -> None:
        try:
            while True:
                self.draw()
                await trio.sleep(1 / REDRAW_HZ)
        finally:
            self.draw()

    def draw(self) -> None:
        out = self.stream
        if self._drawn:
            out.write(f"\x1b[{self._drawn}F")  # back to the first line we drew
        width = max((len(n) for n in self.models), default=0)
        for name, p in self.models.items():
            out.write("\x1b[2K" + self._line(name.ljust(width), p) + "\n")
        self._drawn = len(self.models)
        out.flush()

    @staticmethod
    def _line(name: str, p: Progress) -> str:
        total = p.bytes_total
        frac = min(1.0, p.bytes_done / total) if total else 0.0
        fill = int(frac * _BAR)
        bar = "#" * fill + "-" * (_BAR - fill)
        elapsed = max(1e-6, time.monotonic() - p.started)
        rate = p.received / elapsed
        eta = ""
        if p.state == "downloading" and rate > 0 and total > p.bytes_done:
            eta = f" ETA {int((total - p.bytes_done) / rate)}s"
        # A model waiting for a slot has no rate to show: "0 B/s" would read as a stall.
        speed = "waiting for a slot" if p.state == "queued" else f"{format_bytes(rate)}/s{eta}"
        return (f"{name} {p.state:<11} [{bar}] {frac * 100:3.0f}% "
                f"{format_bytes(p.bytes_done)}/{format_bytes(total)} "
                f"{speed}  files {p.files_done}/{p.files_total}")
