"""The control socket: a small HTTP/1.1 server on a Unix socket, for trio, built on h11.

``shardsync status``, ``curl --unix-socket`` and dashboards ask the running service
what it is doing through this socket (DESIGN.md, "The control socket"). It serves
JSON over HTTP so that every tool that speaks HTTP can use it, and listens on a
Unix socket so that file permissions (mode 0660: the service's user and group)
decide who may ask; a peer without access never reaches the daemon.

This module holds the transport and nothing about models: :func:`serve_control`
runs the socket and calls one async ``handler(request) -> Response`` per request;
:class:`Router` turns ``("GET", "/v1/models/{name}")`` declarations into such a
handler with correct 404 and 405 answers. Handlers raise :class:`HTTPError` for
an error answer; any other exception becomes a logged 500 with a JSON body, and
the server carries on.

Each connection runs in its own task, so a long-poll (``GET /v1/events``) never
holds up other clients. Connections are kept alive between requests, but a client
must deliver each complete request within ``idle_timeout`` of connecting or of the
previous answer, or it is disconnected; request bodies over ``max_body`` get 413.

The routes the service declares (the glue owns the handlers)::

    GET  /v1/status                 status document, below
    GET  /v1/models/{name}          one entry of "models", plus "versions": [...]
    POST /v1/sync                   check every model now          -> 202 {"accepted": [...]}
    POST /v1/models/{name}/sync     check one model now            -> 202
    POST /v1/reload                 re-read the config
    GET  /v1/events?since=N&timeout=S   long-poll; body of EventBatch.to_json()
    GET  /metrics                   Prometheus text (shardsync.daemon.metrics)

Errors are ``{"error": "message"}`` with the HTTP status saying the kind.

The status document (``GET /v1/status``), shared with ``shardsync status``
(:func:`shardsync.daemon.statustable.format_status_table`)::

    {
      "service": {"version": "0.1.0", "uptime_s": 5025.3, "config": "/etc/shardsync.toml",
                  "pid": 4242,
                  "config_error": null | "...: TOML syntax error ..."},  # last reload failed
      "models": [
        {"name": "bodypix",
         "state": "idle" | "checking" | "downloading" | "publishing" | "error",
         "version": "3f2a9c01d2e4" | null,         # current published version
         "last_check": 1718000000.0 | null,        # unix times
         "last_success": 1718000000.0 | null,
         "next_check": 1718001800.0 | null,
         "last_error": "HTTP 503 from ..." | null,
         "progress": {"bytes_done": 0, "bytes_total": 0, "files_done": 0, "files_total": 0}}
      ]
    }

Socket set-up. With systemd socket activation (``LISTEN_PID`` is this process and
``LISTEN_FDS`` >= 1) the passed fd 3 is used and the path is neither created nor
removed. Otherwise the path is bound, chmod-ed to 0660, and only then listened on:
a connect before ``listen`` is refused, so there is no moment of wider access
(whatever the umask). A socket file left by a crash is replaced if nothing answers
on it; if something does, start-up fails with "already running". Anything at the
path that is not a socket is never removed. A lock file ``<path>.lock`` (kept,
empty) serialises two instances starting at the same moment. On exit the socket
file is removed if it is still the one this server created.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http
import json
import logging
import os
import re
import socket
import stat
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import trio

from shardsync.store.errors import LockedError, ShardsyncError, StorageError

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "SOCKET_MODE",
    "Handler",
    "HTTPError",
    "Request",
    "Response",
    "Router",
    "activation_socket",
    "serve_control",
]

log = logging.getLogger(__name__)

# DESIGN.md: the service's user and its group (the operators) may connect; nobody else.
SOCKET_MODE = 0o660
# Control requests carry tiny JSON (a reload, a sync request); more is a mistake or abuse.
MAX_BODY_BYTES = 1024 * 1024
# h11's default; curl and httpx send well under 1 KiB of headers.
MAX_HEADER_BYTES = 16 * 1024
# Long enough for a person typing into `nc -U`, short enough that idle keep-alive
# connections and stalled clients do not pile up.
IDLE_TIMEOUT = 30.0
# One receive; requests are far smaller, so one read usually holds a whole request.
RECV_BYTES = 64 * 1024
# Local clients are few; the kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 64
# sd_listen_fds(3): systemd passes its sockets from this fd on.
SD_LISTEN_FDS_START = 3
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_MAX_SOCKET_PATH = 107

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
    joined with ``", "``); ``body`` is the whole body; ``params`` holds the values
    of a route's ``{placeholders}``, percent-decoded, once :class:`Router` matched.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)

    def json(self, default: Any = None) -> Any:
        """The body parsed as JSON; ``default`` if there is no body; HTTPError 400 if invalid."""
        if not self.body.strip():
            return default
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HTTPError(400, f"the request body is not valid JSON: {exc}") from exc

    def query_int(self, name: str, default: int, *, minimum: int | None = None,
                  maximum: int | None = None) -> int:
        """Query parameter ``name`` as an int (``default`` if absent); HTTPError 400 if invalid."""
        return self._query_number(name, default, int, minimum, maximum)

    def query_float(self, name: str, default: float, *, minimum: float | None = None,
                    maximum: float | None = None) -> float:
        """Query parameter ``name`` as a finite float; HTTPError 400 if invalid or out of range."""
        return self._query_number(name, default, float, minimum, maximum)

    def _query_number(self, name, default, convert, minimum, maximum):
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
    """Dispatch on method and path pattern; itself a handler for :func:`serve_control`.

    Patterns are literal segments and ``{name}`` placeholders, each matching one
    non-empty path segment (percent-decoded into ``request.params[name]``, so a
    handler must still check it, e.g. with ``check_name``)::

        router = Router()
        router.add("GET", "/v1/status", status)

        @router.route("POST", "/v1/models/{name}/sync")
        async def sync_one(request): ...

    No pattern matches: 404. A pattern matches but not the method: 405 with an
    ``Allow`` header. ``HEAD`` is answered by the ``GET`` handler (the server drops
    the body). The first route added wins when several match.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[str, tuple[str | None, ...], tuple[str, ...], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Declare ``handler`` for ``method`` on ``pattern``; ValueError for a malformed one."""
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

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler
        return decorate

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


# ---------------------------------------------------------------- the socket


def activation_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (fd 3), or None if this process was not given one.

    Follows sd_listen_fds(3): used only when ``LISTEN_PID`` names this process and
    ``LISTEN_FDS`` is at least 1 (if more, the first is used, with a warning). When
    reading ``os.environ`` (the default), the variables are removed afterwards so
    that child processes do not think the fd is theirs. Raises
    :class:`ShardsyncError` if fd 3 is not a Unix stream socket.
    """
    env = os.environ if environ is None else environ
    raw_pid, raw_fds = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not raw_pid or not raw_fds:
        return None
    try:
        pid, nfds = int(raw_pid), int(raw_fds)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", raw_pid, raw_fds)
        return None
    if pid != os.getpid() or nfds < 1:
        return None
    if nfds > 1:
        log.warning("systemd passed %d sockets; serving on the first (fd %d) only",
                    nfds, SD_LISTEN_FDS_START)
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise ShardsyncError(f"LISTEN_FDS is set but fd {SD_LISTEN_FDS_START} is not a socket: "
                             f"{exc.strerror or exc}") from exc
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ShardsyncError(f"the socket systemd passed (fd {SD_LISTEN_FDS_START}) is not a Unix "
                             "stream socket; use ListenStream=/path in the .socket unit")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ShardsyncError(f"the socket systemd passed (fd {SD_LISTEN_FDS_START}) is not "
                             "listening; the .socket unit must use Accept=no")
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    if environ is None:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    return sock


def _bind_path(path: str, cleanup: contextlib.ExitStack) -> socket.socket:
    """Bind and listen on ``path`` as described in the module docstring; registers cleanup."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ShardsyncError(f"control socket path is too long for a Unix socket "
                             f"(max {_MAX_SOCKET_PATH} bytes): {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ShardsyncError(f"the directory for the control socket does not exist: {parent}")
    lock_path = path + ".lock"
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot open the control socket's lock file",
                                        file=lock_path) from exc
    # The lock file is never removed: unlinking a lock file lets two processes lock two inodes.
    cleanup.callback(os.close, lock_fd)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"shardsync is already running: another process holds {lock_path}",
                          file=path) from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    cleanup.callback(sock.close)
    try:
        sock.bind(path)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot bind the control socket", file=path) from exc
    st = os.lstat(path)
    cleanup.callback(_unlink_if_same, path, (st.st_dev, st.st_ino))
    try:
        # Before listen(): until then every connect is refused, so the umask never shows.
        os.chmod(path, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot set up the control socket", file=path) from exc
    return sock


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot inspect the control socket path",
                                        file=path) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ShardsyncError("exists and is not a socket; refusing to remove it (check the "
                             "`socket` setting)", file=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.setblocking(False)  # a live server with a full backlog answers EAGAIN, not a hang
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("replacing stale control socket %s (nothing listens on it)", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError.from_oserror(exc, "cannot remove the stale control socket",
                                            file=path) from exc
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass  # EAGAIN: a listener whose queue is full; it is alive
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot check whether the control socket is in use",
                                        file=path) from exc
    finally:
        probe.close()
    raise LockedError("shardsync is already running: a server answers on this socket", file=path)


def _unlink_if_same(path: str, ident: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove control socket %s: %s", path, exc)


async def serve_control(
    path_or_sock: str | os.PathLike[str] | socket.socket,
    handler: Handler,
    *,
    max_body: int = MAX_BODY_BYTES,
    idle_timeout: float = IDLE_TIMEOUT,
    environ: MutableMapping[str, str] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on the control socket until cancelled.

    ``path_or_sock`` is the socket path from the config, or a bound
    ``socket.socket`` (used as is, listened on, closed on exit, never unlinked).
    For a path, a systemd-activated socket (see :func:`activation_socket`, which
    reads ``environ``, default ``os.environ``) takes precedence over binding.

    ``task_status.started(address)`` is called once the socket listens, with the
    socket's own address (a path). Set-up errors raise before that:
    :class:`LockedError` if another instance is running, :class:`ShardsyncError`
    if a non-socket sits at the path or the path is unusable, :class:`StorageError`
    for other OS errors. Once started it does not fail: each connection's errors
    are logged and end that connection only.

    On cancellation every connection is closed (a handler in progress is
    cancelled), and a socket file this call created is removed.
    """
    if max_body < 0:
        raise ValueError(f"max_body must be >= 0, got {max_body}")
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be > 0, got {idle_timeout}")
    with contextlib.ExitStack() as cleanup:
        if isinstance(path_or_sock, socket.socket):
            sock = path_or_sock
            cleanup.callback(sock.close)
            sock.listen(LISTEN_BACKLOG)
        else:
            path = os.fspath(path_or_sock)
            sock = activation_socket(environ)
            if sock is not None:
                cleanup.callback(sock.close)
                log.info("control socket: using the socket systemd passed (%s) instead of %s",
                         sock.getsockname() or "fd 3", path)
            else:
                sock = _bind_path(path, cleanup)
        address = sock.getsockname()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        serve_one = functools.partial(_serve_connection, handler=handler, max_body=max_body,
                                      idle_timeout=idle_timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(
                trio.serve_listeners, serve_one, [listener], handler_nursery=nursery))
            log.info("control socket listening on %s", address)
            task_status.started(address)


# ---------------------------------------------------------------- one connection


class _Abort(Exception):
    """End this connection, after answering ``status`` with ``message`` if status is set."""

    def __init__(self, status: int | None = None, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _serve_connection(stream: trio.SocketStream, *, handler: Handler, max_body: int,
                            idle_timeout: float) -> None:
    conn = _Connection(stream, handler, max_body, idle_timeout)
    try:
        await conn.run()
    except Exception:
        log.exception("control socket: connection failed")
    finally:
        await stream.aclose()


class _Connection:
    def __init__(self, stream: trio.SocketStream, handler: Handler, max_body: int,
                 idle_timeout: float) -> None:
        self.stream = stream
        self.handler = handler
        self.max_body = max_body
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
        length = _header(event.headers, b"content-length")
        if length is not None and int(length) > self.max_body:
            raise _Abort(413, f"request body too large: {int(length)} bytes, "
                              f"at most {self.max_body}")
        if self.h11.they_are_waiting_for_100_continue:
            await self._write(self.h11.send(h11.InformationalResponse(status_code=100,
                                                                      headers=[])))
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.max_body:
                    raise _Abort(413, f"request body too large: at most {self.max_body} bytes")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # ConnectionClosed mid-body
                return None
        return _make_request(event, bytes(body))

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


def _make_request(event: h11.Request, body: bytes) -> Request:
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
    return Request(event.method.decode("ascii"), path, query, headers, body)
