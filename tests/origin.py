"""The origin every test talks to: the demo's origin plus switchable faults.

:class:`shardsync.daemon.demo.origin.Origin` serves files faithfully (validators,
conditional requests, ranges, redirects, byte counters). The fault switches only tests
use live here: ``fault_*`` apply to paths matching a glob (``fnmatch``: ``*`` also
matches ``/``), fire on the next ``times`` requests where they apply (``None``: until
:meth:`Origin.clear_faults`), and the newest one of a kind wins. The demo origin's
handler applies what :meth:`Origin._take` hands it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardsync.daemon.demo import origin as _demo
from shardsync.daemon.demo.origin import LogEntry

__all__ = ["LogEntry", "Origin"]


@dataclass
class _Fault:
    kind: str
    pattern: str
    times: int | None  # None: until clear_faults()
    args: dict[str, Any] = field(default_factory=dict)


class Origin(_demo.Origin):
    """The demo origin with fault switches (see the module docstring)."""

    def __init__(self, root: Path | str | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(root, host=host, port=port)
        self._faults: list[_Fault] = []

    def fault_status(self, pattern: str, status: int = 503, *, retry_after: int | None = 1,
                     times: int | None = 1) -> None:
        """Answer ``status`` (with ``Retry-After: retry_after`` unless None), then serve."""
        if not 400 <= status <= 599:
            raise ValueError(f"fault status must be 4xx or 5xx, not {status!r}")
        self._add("status", pattern, times, status=status, retry_after=retry_after)

    def fault_drop(self, pattern: str, after: int, *, reset: bool = False,
                   times: int | None = None) -> None:
        """Close the connection after ``after`` body bytes of a GET (FIN; RST if ``reset``)."""
        if after < 0:
            raise ValueError(f"after must be >= 0, not {after!r}")
        self._add("drop", pattern, times, after=after, reset=reset)

    def fault_truncate(self, pattern: str, missing: int = 1, *, times: int | None = None) -> None:
        """Send the true Content-Length but ``missing`` bytes fewer, then close (short read)."""
        if missing < 1:
            raise ValueError(f"missing must be >= 1, not {missing!r}")
        self._add("truncate", pattern, times, missing=missing)

    def fault_ignore_range(self, pattern: str, *, times: int | None = None) -> None:
        """Answer a request with a Range header with 200 and the whole body."""
        self._add("ignore_range", pattern, times)

    def fault_ignore_if_range(self, pattern: str, *, times: int | None = None) -> None:
        """Answer a Range request with 206 even when its If-Range no longer matches: the
        current file's bytes from the asked offset, under the current ETag (a proxy or
        CDN that mishandles If-Range)."""
        self._add("ignore_if_range", pattern, times)

    def fault_range_body_from_start(self, pattern: str, *, times: int | None = None) -> None:
        """On a 206, announce the range asked for but send the file's bytes from offset 0
        (right headers, wrong body)."""
        self._add("range_body_from_start", pattern, times)

    def fault_html_fallback(self, pattern: str = "*", *, times: int | None = None) -> None:
        """Answer a missing file with 200, text/html and a small page (SPA fallback)."""
        self._add("html_fallback", pattern, times)

    def fault_drip(self, pattern: str, chunk: int, interval: float, *,
                   times: int | None = None) -> None:
        """Send GET bodies ``chunk`` bytes at a time, pausing ``interval`` s after each."""
        if chunk < 1 or interval < 0:
            raise ValueError(f"need chunk >= 1 and interval >= 0, not {chunk!r}, {interval!r}")
        self._add("drip", pattern, times, chunk=chunk, interval=interval)

    def fault_drip_headers(self, pattern: str, interval: float, *,
                           times: int | None = None) -> None:
        """Send the status line and headers of any answer one byte at a time, pausing
        ``interval`` s after each (each byte resets a client's read timeout), then the
        body as it would be sent."""
        if interval < 0:
            raise ValueError(f"need interval >= 0, not {interval!r}")
        self._add("drip_headers", pattern, times, interval=interval)

    def fault_endless(self, pattern: str, *, content_length: int | None = None,
                      times: int | None = None) -> None:
        """Send the body (repeated) until the client hangs up or stop().

        Headers say ``content_length`` (a lie) if given, else no length and
        ``Connection: close``.
        """
        self._add("endless", pattern, times, content_length=content_length)

    def fault_bad_content_range(self, pattern: str, shift: int = 1, *,
                                times: int | None = None) -> None:
        """On a 206, serve (and announce in Content-Range) a range starting ``shift`` bytes
        away from the one asked for (clamped to the file)."""
        self._add("bad_content_range", pattern, times, shift=shift)

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def _add(self, kind: str, pattern: str, times: int | None, **args: Any) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, not {times!r}")
        with self._lock:
            self._faults.append(_Fault(kind, pattern.lstrip("/"), times, args))

    def _take(self, kind: str, rel: str) -> dict[str, Any] | None:
        """The args of the newest ``kind`` fault matching ``rel``, used up by one."""
        with self._lock:
            for fault in reversed(self._faults):
                if fault.kind == kind and fnmatch.fnmatchcase(rel, fault.pattern):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault.args
        return None
