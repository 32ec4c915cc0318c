"""A small HTTP/1.1 server for trio on h11: requests to one async handler, JSON answers.

:func:`serve_connection` serves one connection: it calls one async
``handler(request) -> Response`` per request; :class:`Router` turns
``("GET", "/v1/models/{name}")`` declarations into such a handler with correct 404
and 405 answers. Handlers raise :class:`HTTPError` for an error answer; any other
exception becomes a logged 500 with a JSON body, and the server carries on.

Connections are kept alive between requests, but a client must deliver each complete
request within ``idle_timeout`` of connecting or of the previous answer, or it is
disconnected. :class:`ConnectionLimit` caps how many are served at once (each one is a
file descriptor of the daemon's): past the cap a connection is answered 503 with
``Retry-After`` and closed. Request bodies are small JSON documents or nothing: a body
over :data:`MAX_BODY_BYTES` (by its ``Content-Length``), or one sent with
``Transfer-Encoding``, is answered 413 without being read, and its connection closed,
so an announced body costs nothing however large; a route declared without
``body=True`` answers any body 413 (:class:`Router`).

What listens, and where, is :mod:`shardsync.daemon.control`'s business.
"""

from __future__ import annotations

import http
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import trio

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_REFUSING",
    "REFUSE_TIMEOUT",
    "RETRY_AFTER",
    "ConnectionLimit",
    "Handler",
    "HTTPError",
    "Request",
    "Response",
    "Router",
    "serve_connection",
]

log = logging.getLogger(__name__)

# h11's default; curl and httpx send well under 1 KiB of headers.
MAX_HEADER_BYTES = 16 * 1024
# Long enough for a person typing into `nc -U`, short enough that idle keep-alive
# connections and stalled clients do not pile up.
IDLE_TIMEOUT = 30.0
# Connections served at once. Each holds a file descriptor of the daemon, whose downloads
# need theirs (1064 idle clients under systemd's soft limit of 1024 made syncs fail with
# EMFILE); 64 is far more than an operator's status calls, dashboards and scripts use
# at once, and a small share of even a 1024-descriptor limit.
MAX_CONNECTIONS = 64
# Connections over the cap being answered 503 at once; past that a new one is closed
# unanswered, so a flood of connections holds at most MAX_CONNECTIONS + MAX_REFUSING.
MAX_REFUSING = 16
# How long a connection over the cap has to send its request: enough for any local
# client (they send it at once); it is closed after, not kept for IDLE_TIMEOUT.
REFUSE_TIMEOUT = 2.0
# The 503's Retry-After (s): a slot frees as soon as any client's request is answered
# (milliseconds) or an idle one times out.
RETRY_AFTER = 1
# The largest request body read: the JSON bodies routes take are tens of bytes
# ({"version": "<16 hex digits>"}); 4 KiB leaves room and bounds what a client
# makes the daemon hold.
MAX_BODY_BYTES = 4 * 1024
# One receive; requests are far smaller, so one read usually holds a whole request.
RECV_BYTES = 64 * 1024

Handler = Callable[["Request"], Awaitable["Response"]]


class HTTPError(Exception):
    """Raised by a handler to answer ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)

    def to_response(self) -> Response:
        return Response(self.status, {"error": self.message}, headers=self.headers)


@dataclass(frozen=True)
class Request:
    """One request as the handler sees it.

    ``path`` is the request path without the query string, as sent (still
    percent-encoded); ``query`` maps each query parameter to its value (a repeated
    parameter: the last one); ``headers`` maps lower-case names to values (repeats
    joined with ``", "``); ``params`` holds the values of a route's
    ``{placeholders}``, percent-decoded, once :class:`Router` matched; ``body`` the
    request body (at most :data:`MAX_BODY_BYTES`; empty if none).
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON (None if there is no body); HTTPError 400 if it is not
        JSON, or is JSON a browser would refuse (``NaN``)."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise HTTPError(400, f"the request body is not JSON: {exc}") from None

    def query_int(self, name: str, default: int, *, minimum: int | None = None,
                  maximum: int | None = None) -> int:
        """Query parameter ``name`` as an int (``default`` if absent); HTTPError 400 if invalid."""
        return int(self._query_number(name, default, int, minimum, maximum))

    def query_float(self, name: str, default: float, *, minimum: float | None = None,
                    maximum: float | None = None) -> float:
        """Query parameter ``name`` as a finite float; HTTPError 400 if invalid or out of range."""
        return float(self._query_number(name, default, float, minimum, maximum))

    def _query_number(self, name: str, default: float, convert: Callable[[str], float],
                      minimum: float | None, maximum: float | None) -> float:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            value = convert(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        except ValueError:
            raise HTTPError(400, f"query parameter {name} must be a number, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise HTTPError(400, f"query parameter {name} must be within "
                                 f"[{minimum}, {maximum}], got {raw}")
        return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Response:
    """An answer. ``body`` decides the encoding unless ``content_type`` is given:

    - ``bytes``: sent as is (``application/octet-stream``);
    - ``str``: UTF-8 text (``text/plain; charset=utf-8``);
    - ``None``: no body;
    - anything else: JSON (``application/json``). Use :meth:`json` for a JSON string.

    The body is encoded at once, so an unserializable value fails in the handler
    (and becomes a 500), not halfway through sending.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int = 200, body: Any = None, content_type: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        if not 200 <= status <= 599:
            raise ValueError(f"status must be a final status 200..599, got {status}")
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data, content_type = body, content_type or "application/octet-stream"
        elif isinstance(body, str):
            data, content_type = body.encode(), content_type or "text/plain; charset=utf-8"
        else:
            data, content_type = _json_bytes(body), content_type or "application/json"
        if data and status in (204, 304):
            raise ValueError(f"a {status} response has no body")
        self.status = status
        self.body = data
        self.content_type = content_type
        self.headers = list(headers)

    @classmethod
    def json(cls, value: Any, status: int = 200,
             headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A JSON answer, whatever ``value`` is (a ``str`` too)."""
        return cls(status, _json_bytes(value), "application/json", headers)

    def json_body(self) -> Any:
        """The body parsed back as JSON (for tests and in-process callers)."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:60]!r}, {self.content_type!r})"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode() + b"\n"


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Router:
    """Dispatch on method and path pattern; itself a handler for :func:`serve_connection`.

    Patterns are literal segments and ``{name}`` placeholders, each matching one
    non-empty path segment (percent-decoded into ``request.params[name]``, so a
    handler must still check it, e.g. with ``check_name``)::

        router = Router()
        router.add("GET", "/v1/status", status)
        router.add("POST", "/v1/models/{name}/sync", sync_one)

    No pattern matches: 404. A pattern matches but not the method: 405 with an
    ``Allow`` header. A request with a body to a route not added with ``body=True``:
    413. ``HEAD`` is answered by the ``GET`` handler (the server drops
    the body). The first route added wins when several match.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[str, tuple[str | None, ...], tuple[str, ...], Handler]] = []
        self._takes_body: set[Handler] = set()

    def add(self, method: str, pattern: str, handler: Handler, *, body: bool = False) -> None:
        """Declare ``handler`` for ``method`` on ``pattern``; ValueError for a malformed one.
        ``body``: the handler reads ``request.body`` (else a request with one is 413)."""
        method = method.upper()
        if not pattern.startswith("/") or "?" in pattern:
            raise ValueError(f"route pattern must be a path starting with '/': {pattern!r}")
        segments: list[str | None] = []
        names: list[str] = []
        for seg in pattern[1:].split("/"):
            m = _PARAM.fullmatch(seg)
            if m:
                if m[1] in names:
                    raise ValueError(f"placeholder {m[1]} repeats in {pattern!r}")
                names.append(m[1])
                segments.append(None)
            elif "{" in seg or "}" in seg:
                raise ValueError(f"bad placeholder in route {pattern!r}: {seg!r}")
            else:
                segments.append(seg)
        key = tuple(segments)
        if any(r[0] == method and r[1] == key for r in self._routes):
            raise ValueError(f"route {method} {pattern} declared twice")
        self._routes.append((method, key, tuple(names), handler))
        if body:
            self._takes_body.add(handler)

    async def __call__(self, request: Request) -> Response:
        try:
            parts = [urllib.parse.unquote(s, errors="strict") for s in request.path[1:].split("/")]
        except UnicodeDecodeError:
            raise HTTPError(400, "the path is not valid UTF-8 once percent-decoded") from None
        want = "GET" if request.method == "HEAD" else request.method
        allowed: set[str] = set()
        for method, segments, names, handler in self._routes:
            if len(segments) != len(parts):
                continue
            values = []
            for seg, part in zip(segments, parts, strict=True):
                if seg is None:
                    if not part:
                        break
                    values.append(part)
                elif seg != part:
                    break
            else:
                if method == want:
                    if request.body and handler not in self._takes_body:
                        raise HTTPError(413, f"{method} {request.path} takes no request body")
                    return await handler(replace(request, params=dict(zip(names, values,
                                                                          strict=True))))
                allowed.add(method)
        if not allowed:
            raise HTTPError(404, f"no such resource: {request.path}")
        if "GET" in allowed:
            allowed.add("HEAD")
        allow = ", ".join(sorted(allowed))
        raise HTTPError(405, f"{request.method} not allowed on {request.path} (allowed: {allow})",
                        headers=[("allow", allow)])


# ---------------------------------------------------------------- one connection


class _Abort(Exception):
    """End this connection, after answering ``status`` with ``message`` if status is set."""

    def __init__(self, status: int | None = None, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def serve_connection(stream: trio.SocketStream, *, handler: Handler,
                           idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Serve requests on ``stream`` until the client closes, idles or must be closed; then
    close it. Never raises: a failure is logged and ends this connection only."""
    conn = _Connection(stream, handler, idle_timeout)
    try:
        await conn.run()
    except Exception:
        log.exception("control socket: connection failed")
    finally:
        await stream.aclose()


class ConnectionLimit:
    """Serves connections (a ``trio.serve_listeners`` handler) with :func:`serve_connection`,
    at most ``max_connections`` at once.

    A connection over the cap is answered ``503 Service Unavailable`` with
    ``Retry-After: 1`` and ``Connection: close`` once it has sent its request (within
    :data:`REFUSE_TIMEOUT`), then closed; with :data:`MAX_REFUSING` of those already in
    hand, a further one is closed at once, unanswered. So a flood costs the daemon a
    bounded number of file descriptors, whatever the soft limit it runs under.

    Why refuse the newcomer rather than close the oldest idle connection: evicting lets
    whoever opens connections fastest push out everyone else (a dashboard between two
    long-polls, an operator's ``shardsync status``), turning a leak in one client into
    an outage for all; refusing keeps every client already served working, and the new
    one gets an answer it can act on. Idle connections do not stay forever either:
    :func:`serve_connection` closes one after ``idle_timeout`` without a request.

    The count is this process's, across every listener it serves; a connection counts
    from when its task starts to when it is closed.
    """

    def __init__(self, handler: Handler, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.served = 0
        self.refusing = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        if self.served < self.max_connections:
            self.served += 1
            try:
                await serve_connection(stream, handler=self.handler,
                                       idle_timeout=self.idle_timeout)
            finally:
                self.served -= 1
        elif self.refusing < MAX_REFUSING:
            self.refusing += 1
            try:
                await serve_connection(stream, handler=_busy, idle_timeout=REFUSE_TIMEOUT)
            finally:
                self.refusing -= 1
        else:
            await stream.aclose()


async def _busy(request: Request) -> Response:
    """The answer of a connection over :class:`ConnectionLimit`'s cap."""
    raise HTTPError(503, f"the control socket is serving its maximum of {MAX_CONNECTIONS} "
                         "connections; try again shortly",
                    headers=[("retry-after", str(RETRY_AFTER)), ("connection", "close")])


class _Connection:
    def __init__(self, stream: trio.SocketStream, handler: Handler, idle_timeout: float) -> None:
        self.stream = stream
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def run(self) -> None:
        while True:
            try:
                request = None
                with trio.move_on_after(self.idle_timeout):
                    request = await self._read_request()
                if request is None:  # closed by the client, or idle too long
                    return
                response = await self._call(request)
                await self._send(response, head=request.method == "HEAD")
            except _Abort as abort:
                if abort.status is not None:
                    await self._send_error(abort.status, abort.message)
                return
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # MUST_CLOSE (HTTP/1.0, "Connection: close") or a half-read request
            self.h11.start_next_cycle()

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Abort(exc.error_status_hint, f"bad request: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.h11.receive_data(data)

    async def _read_request(self) -> Request | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        # A body too large to read is refused unread (no 100 Continue) and the connection
        # closed, so an announced body costs nothing however large. h11 has checked
        # that Content-Length is a number; chunked bodies are not worth their code here.
        length = _header(event.headers, b"content-length")
        if (length is not None and int(length) > MAX_BODY_BYTES) or \
                _header(event.headers, b"transfer-encoding") is not None:
            raise _Abort(413, f"a request body may be at most {MAX_BODY_BYTES} bytes, "
                              "with a Content-Length")
        if self.h11.they_are_waiting_for_100_continue:  # curl's, for bodies over 1 KiB
            await self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = b""
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data  # at most Content-Length, which h11 holds it to
            elif isinstance(part, h11.EndOfMessage):
                return replace(_make_request(event), body=body)
            else:  # ConnectionClosed
                return None

    async def _call(self, request: Request) -> Response:
        try:
            response = await self.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
        except HTTPError as exc:
            response = exc.to_response()
        except Exception as exc:
            log.exception("control socket: %s %s failed", request.method, request.path)
            response = Response(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        log.debug("control socket: %s %s -> %d", request.method, request.path, response.status)
        return response

    async def _send(self, response: Response, *, head: bool = False,
                    close: bool = False) -> None:
        headers = [("content-length", str(len(response.body)))]
        if response.status in (204, 304):
            headers = []
        if response.content_type:
            headers.append(("content-type", response.content_type))
        if close:
            headers.append(("connection", "close"))
        headers.extend(response.headers)
        try:
            reason = http.HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        await self._write(self.h11.send(h11.Response(status_code=response.status,
                                                     headers=headers, reason=reason)))
        if response.body and not head:
            await self._write(self.h11.send(h11.Data(data=response.body)))
        await self._write(self.h11.send(h11.EndOfMessage()))

    async def _send_error(self, status: int, message: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already under way; all we can do is close
        try:
            await self._send(Response(status, {"error": message}), close=True)
        except (_Abort, h11.LocalProtocolError):
            pass

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.idle_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Abort() from None
        if scope.cancelled_caught:  # the client stopped reading
            raise _Abort()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _make_request(event: h11.Request) -> Request:
    target = event.target.decode("ascii")
    if target.startswith(("http://", "https://")):  # absolute form, as sent to proxies
        split = urllib.parse.urlsplit(target)
        path, query_string = split.path or "/", split.query
    else:
        path, _, query_string = target.partition("?")
    if not path.startswith("/"):
        raise _Abort(400, f"bad request target {target!r}")
    try:
        query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True,
                                            errors="strict"))
    except UnicodeDecodeError:
        raise _Abort(400, "the query string is not valid UTF-8") from None
    headers: dict[str, str] = {}
    for key, value in event.headers:
        name, text = key.decode("latin-1"), value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return Request(event.method.decode("ascii"), path, query, headers)
