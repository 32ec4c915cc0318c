"""The table ``shardsync status`` prints: ``GET /v1/status`` rendered for a terminal.

The status document's shape is fixed in :mod:`shardsync.daemon.control`; fields
missing or null in it show as ``-``, so an older or newer service still renders.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from .units import format_bytes

__all__ = ["format_status_table"]

# Longest error text in the table, so one long traceback line does not wrap every row.
_ERROR_WIDTH = 60

_COLUMNS = ("MODEL", "STATE", "VERSION", "SIGNED", "LAST SUCCESS", "NEXT CHECK", "PROGRESS",
            "LAST ERROR")

# Hex digits of a key id the table shows: enough to tell an operator's few keys apart.
_KEYID_WIDTH = 8


def format_status_table(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """Render ``GET /v1/status`` as a header line and an aligned table, newline-terminated.

    Times are shown relative to ``now`` (default: the current time): ``5m ago``,
    ``in 25m``. A failed reload (``service.config_error``) gets a line of its own
    under the header, in full: the operator must fix the file it names. Each pinned
    model gets a line under the table saying what its pin holds back (a column would
    be ``-`` on nearly every row). So does each model whose current version a mirror
    served (``source`` is not its ``url``), naming the mirror: a URL is too wide for a
    column, and ``url`` is what an operator expects. Missing or null fields show as
    ``-``, so an older or newer service still renders.
    """
    now = time.time() if now is None else now
    service = status.get("service") or {}
    head = [f"shardsync {service.get('version', '?')}"]
    if service.get("pid") is not None:
        head.append(f"pid {service['pid']}")
    if service.get("uptime_s") is not None:
        head.append(f"up {_duration(float(service['uptime_s']))}")
    if service.get("config"):
        head.append(f"config {service['config']}")
    lines = [", ".join(head)]
    if service.get("config_error"):
        error = " ".join(str(service["config_error"]).split())
        lines.append(f"config error, still running the previous config: {error}")
    models = status.get("models") or []
    if not models:
        lines.append("no models configured")
        return "\n".join(lines) + "\n"
    rows = [_COLUMNS] + [_row(m, now) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    lines += [_pinned(m, now) for m in models if isinstance(m.get("pinned"), Mapping)]
    lines += [_retrying(m, now) for m in models if isinstance(m.get("retrying"), Mapping)]
    lines += [f"mirror: {m.get('name', '?')} at {str(m.get('version') or '-')[:12]} "
              f"served by {m['source']}" for m in models
              if m.get("source") and m.get("url") and m["source"] != m["url"]]
    return "\n".join(lines) + "\n"


def _pinned(model: Mapping[str, Any], now: float) -> str:
    """``pinned: m at 3f2a9c01d2e4 since 5m ago; 9c01d2e43f2a waiting (unpin to publish it)``."""
    pin = model["pinned"]
    waiting = pin.get("waiting")
    held = (f"{str(waiting)[:12]} waiting (unpin to publish it)" if waiting
            else "nothing newer seen")
    return (f"pinned: {model.get('name', '?')} at {str(pin.get('version') or '-')[:12]} "
            f"since {_relative(pin.get('since'), now)}; {held}")


def _retrying(model: Mapping[str, Any], now: float) -> str:
    """``retrying: m: file URL: connection failed: ... (attempt 2, next try in 3s)``."""
    r = model["retrying"]
    reason = " ".join(str(r.get("error") or "?").split())
    when = _relative(r.get("next_try"), now)
    return (f"retrying: {model.get('name', '?')}: file {r.get('file') or '?'}: {reason} "
            f"(attempt {r.get('attempt', '?')} failed, next try {when})")


def _row(model: Mapping[str, Any], now: float) -> tuple[str, ...]:
    error = model.get("last_error")
    if error:
        error = " ".join(str(error).split())
        if len(error) > _ERROR_WIDTH:
            error = error[:_ERROR_WIDTH - 3] + "..."
    version = model.get("version")
    return (
        str(model.get("name", "?")),
        _state(model),
        (str(version)[:12] + (" pinned" if model.get("pinned") else "")) if version else "-",
        _signed(model.get("signature")),
        _relative(model.get("last_success"), now),
        _relative(model.get("next_check"), now),
        _progress(model),
        error or "-",
    )


def _state(model: Mapping[str, Any]) -> str:
    """The state; ``waiting for 01:00-05:00`` for a model waiting for a download window."""
    waiting = model.get("waiting")
    if model.get("state") == "waiting" and isinstance(waiting, Mapping):
        return f"waiting for {waiting.get('window', '?')}"
    return str(model.get("state") or "-")


def _signed(sig: Any) -> str:
    """``v3 key 1a2b3c4d until 2027-03-01``, or ``-`` for a model not signed."""
    if not isinstance(sig, Mapping) or not sig.get("signed"):
        return "-"
    parts = [f"v{sig.get('version', '?')}"]
    if sig.get("keyid"):
        parts.append(f"key {str(sig['keyid'])[:_KEYID_WIDTH]}")
    if sig.get("expires"):
        parts.append(f"until {str(sig['expires'])[:10]}")
    return " ".join(parts)


def _progress(model: Mapping[str, Any]) -> str:
    p = model.get("progress") or {}
    if model.get("state") not in ("queued", "checking", "downloading", "publishing"):
        return "-"
    bytes_done, bytes_total = p.get("bytes_done") or 0, p.get("bytes_total") or 0
    files_done, files_total = p.get("files_done") or 0, p.get("files_total") or 0
    if not bytes_total and not files_total:
        return "-"
    parts = []
    if bytes_total:
        pct = math.floor(100 * bytes_done / bytes_total)
        parts.append(f"{pct}% {format_bytes(bytes_done)}/{format_bytes(bytes_total)}")
    if files_total:
        parts.append(f"{files_done}/{files_total} files")
    return ", ".join(parts)


def _relative(t: Any, now: float) -> str:
    if t is None:
        return "-"
    delta = float(t) - now
    if abs(delta) < 1:
        return "now"
    return f"in {_duration(delta)}" if delta > 0 else f"{_duration(-delta)} ago"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
