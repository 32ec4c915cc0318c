"""The client side of the control socket, for ``shardsync status`` and scripts.

The CLI runs without trio, so this uses httpx's synchronous client over the Unix
socket (``httpx.HTTPTransport(uds=path)``; the host in ``http://localhost`` is
ignored). Connection failures are translated here, once, into a
:class:`ShardsyncError` whose message tells the operator what to do: the service
is not running, or they lack permission on the socket. Error answers become
:class:`NotFoundError` (404) or :class:`ShardsyncError` carrying the service's
``{"error": ...}`` message.

:func:`format_status_table` renders the status document whose shape is fixed in
:mod:`shardsync.daemon.control`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import httpx

from shardsync.store import NotFoundError, ShardsyncError

from .units import format_bytes

__all__ = [
    "DEFAULT_TIMEOUT",
    "ControlClient",
    "format_status_table",
    "get_json",
    "post_json",
]

# The service answers from memory within milliseconds; 10 s without an answer means it is stuck.
DEFAULT_TIMEOUT = 10.0
# Any host works over a Unix socket; this one matches DESIGN.md's curl examples.
BASE_URL = "http://localhost"
# Longest error text in the table, so one long traceback line does not wrap every row.
_ERROR_WIDTH = 60


class ControlClient:
    """A connection to the service's control socket at ``socket_path``.

    ``transport`` is for callers that bring their own (it must reach the same
    socket); by default one is built for ``socket_path``. Use as a context manager
    or call :meth:`close`.
    """

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.socket_path = socket_path
        self._client = httpx.Client(
            transport=transport or httpx.HTTPTransport(uds=socket_path),
            base_url=BASE_URL, timeout=timeout,
        )

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send one request and return the parsed JSON answer (None for an empty body).

        Raises :class:`ShardsyncError` if the service cannot be reached, does not
        answer in time, or answers with an error (:class:`NotFoundError` for 404).
        ``timeout`` overrides the client's (a long-poll needs more than its own).
        """
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            response = self._client.request(method, path, json=json, params=params, **extra)
        except httpx.TimeoutException as exc:
            raise ShardsyncError(f"shardsync did not answer within "
                                 f"{timeout or self._client.timeout.read} s "
                                 f"(socket {self.socket_path})") from exc
        except httpx.TransportError as exc:
            raise _connect_error(exc, self.socket_path) from exc
        return _decode(response, method, path)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path?params``, returning the JSON answer."""
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        """``POST path`` with ``body`` as JSON (no body if None), returning the JSON answer."""
        return self.request("POST", path, json=body)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        return self.get("/v1/status")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def get_json(socket_path: str, path: str, *, params: Mapping[str, Any] | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> Any:
    """One ``GET`` on the control socket; see :meth:`ControlClient.request` for errors."""
    with ControlClient(socket_path, timeout=timeout) as client:
        return client.request("GET", path, params=params)


def post_json(socket_path: str, path: str, body: Any = None, *,
              timeout: float = DEFAULT_TIMEOUT) -> Any:
    """One ``POST`` on the control socket; see :meth:`ControlClient.request` for errors."""
    with ControlClient(socket_path, timeout=timeout) as client:
        return client.request("POST", path, json=body)


def _connect_error(exc: httpx.TransportError, path: str) -> ShardsyncError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, FileNotFoundError):
        return ShardsyncError(f"shardsync is not running (no socket at {path})")
    if isinstance(cause, ConnectionRefusedError):
        return ShardsyncError(f"shardsync is not running (nothing listens on {path})")
    if isinstance(cause, PermissionError):
        return ShardsyncError(f"permission denied on {path} (the socket is for the service's "
                              "user and group: use sudo, or join that group)")
    if isinstance(exc, httpx.ConnectError):
        return ShardsyncError(f"cannot connect to shardsync at {path}: {cause or exc}")
    return ShardsyncError(f"the connection to shardsync at {path} failed: {exc}")


def _decode(response: httpx.Response, method: str, path: str) -> Any:
    try:
        body = response.json() if response.content.strip() else None
    except ValueError:
        body = None
        if response.is_success:
            raise ShardsyncError(f"{method} {path}: shardsync answered with something that is "
                                 f"not JSON: {response.text[:200]!r}") from None
    if response.is_success:
        return body
    message = body.get("error") if isinstance(body, dict) else None
    message = message or response.text.strip()[:200] or response.reason_phrase
    if response.status_code == 404:
        raise NotFoundError(message)
    raise ShardsyncError(f"{method} {path}: {message} (HTTP {response.status_code})")


# ---------------------------------------------------------------- the status table

_COLUMNS = ("MODEL", "STATE", "VERSION", "LAST SUCCESS", "NEXT CHECK", "PROGRESS", "LAST ERROR")


def format_status_table(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """Render ``GET /v1/status`` as a header line and an aligned table, newline-terminated.

    Times are shown relative to ``now`` (default: the current time): ``5m ago``,
    ``in 25m``. A failed reload (``service.config_error``) gets a line of its own
    under the header, in full: the operator must fix the file it names. Missing or
    null fields show as ``-``, so an older or newer service still renders.
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
    return "\n".join(lines) + "\n"


def _row(model: Mapping[str, Any], now: float) -> tuple[str, ...]:
    error = model.get("last_error")
    if error:
        error = " ".join(str(error).split())
        if len(error) > _ERROR_WIDTH:
            error = error[:_ERROR_WIDTH - 3] + "..."
    version = model.get("version")
    return (
        str(model.get("name", "?")),
        str(model.get("state") or "-"),
        str(version)[:12] if version else "-",
        _relative(model.get("last_success"), now),
        _relative(model.get("next_check"), now),
        _progress(model),
        error or "-",
    )


def _progress(model: Mapping[str, Any]) -> str:
    p = model.get("progress") or {}
    if model.get("state") not in ("checking", "downloading", "publishing"):
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
