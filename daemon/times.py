"""Times as the API writes them: Unix seconds with an RFC 3339 twin ``<key>_at``.

Every key holding Unix seconds (``last_check``, ``since``, an event's ``time``) has a
twin ``<key>_at`` holding the same moment in RFC 3339, UTC, to the second
(``"2026-12-02T01:02:03Z"``), as Syncthing's API, which operators know, writes times:
readable in ``curl`` output and by ``jq``'s ``fromdate``. Its own module so that the
CLI's one-shot commands (``pin`` without a service) write the same documents as the
control socket without importing it (tests/test_cli_imports.py).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["rfc3339", "with_rfc3339"]


def rfc3339(t: float | None) -> str | None:
    """Unix seconds as RFC 3339 in UTC, to the second: ``"2026-12-02T01:02:03Z"``."""
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def with_rfc3339(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``doc`` with ``<key>_at`` (:func:`rfc3339`) right after each of ``keys`` it has."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out[k] = v
        if k in keys:
            out[k + "_at"] = rfc3339(v)
    return out
