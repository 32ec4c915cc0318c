"""The client side of the control socket, for ``shardsync status`` and scripts.

The CLI runs without trio, so this uses httpx's synchronous client over the Unix
socket (``httpx.HTTPTransport(uds=path)``; the host in ``http://localhost`` is
ignored). Connection failures are translated here, once, into an
:class:`UnreachableError` whose message tells the operator what to do: the service
is not running, or they lack permission on the socket. Error answers become
:class:`NotFoundError` (404) or :class:`ShardsyncError` carrying the service's
``{"error": ...}`` message. A 503 (the socket's connection cap is full: the request
was not served) is sent again after its Retry-After, a few times.

The status table ``shardsync status`` prints is :mod:`shardsync.daemon.statustable`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from shardsync.store import NotFoundError, ShardsyncError

from .errors import UnreachableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "ControlClient",
    "get_json",
    "post_json",
]

# The service answers from memory within milliseconds; 10 s without an answer means it is stuck.
DEFAULT_TIMEOUT = 10.0
# Any host works over a Unix socket; this one matches docs/design.md's curl examples.
BASE_URL = "http://localhost"
# A 503 from the control socket means its connection cap is full (httpserver.ConnectionLimit)
# and the request was not served at all, so any method may be sent again: up to this many
# times, each after the answer's Retry-After (at most MAX_BUSY_WAIT s).
BUSY_RETRIES = 5
MAX_BUSY_WAIT = 2.0


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
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = self._client.request(method, path, json=json, params=params,
                                                **extra)
            except httpx.TimeoutException as exc:
                raise ShardsyncError(f"shardsync did not answer within "
                                     f"{timeout or self._client.timeout.read} s "
                                     f"(socket {self.socket_path})") from exc
            except httpx.TransportError as exc:
                raise _connect_error(exc, self.socket_path) from exc
            if response.status_code != 503 or attempt == BUSY_RETRIES:
                break
            time.sleep(_retry_after(response))
        return _decode(response, method, path)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path?params``, returning the JSON answer."""
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        """``POST path`` with ``body`` as JSON (no body if None), returning the JSON answer."""
        return self.request("POST", path, json=body)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        status: dict[str, Any] = self.get("/v1/status")
        return status

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
    """What a transport failure means to the operator: the service cannot be reached
    (:class:`UnreachableError`) when the connection itself failed, else a plain error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, FileNotFoundError):
        return UnreachableError(f"shardsync is not running (no socket at {path})")
    if isinstance(cause, ConnectionRefusedError):
        return UnreachableError(f"shardsync is not running (nothing listens on {path})")
    if isinstance(cause, PermissionError):
        return UnreachableError(f"permission denied on {path} (the socket is for the "
                                "service's user and group: use sudo, or join that group)")
    if isinstance(exc, httpx.ConnectError):
        return UnreachableError(f"cannot connect to shardsync at {path}: {cause or exc}")
    return ShardsyncError(f"the connection to shardsync at {path} failed: {exc}")


def _retry_after(response: httpx.Response) -> float:
    """The seconds a 503 asks to wait (its Retry-After), within (0, MAX_BUSY_WAIT]."""
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.1), MAX_BUSY_WAIT)


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
