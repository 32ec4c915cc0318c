"""The demo origin's request handling: one HTTP/1.1 answer per request, faults applied.

:class:`Handler` answers GET and HEAD for an :class:`~.origin.Origin`: redirects,
status faults, conditional requests (``If-None-Match``, ``If-Modified-Since``), byte
ranges with ``If-Range`` (RFC 9110, parsed here), and bodies by sendfile or, when a
fault shapes them (drip, drop, truncate, endless), by plain writes; headers are written
a byte at a time under a header drip. :class:`Server`
tracks every accepted connection so that ``Origin.stop()`` can :func:`cut` it.
Kept apart from :mod:`.origin`, which holds the files, counters and lifecycle, because
this is the wire protocol: what is on disk and what is counted is the origin's.
"""

from __future__ import annotations

import email.utils
import errno
import hashlib
import http
import http.server
import io
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from .origin import Origin

__all__ = ["Blob", "Handler", "LogEntry", "Server", "cut", "etag_for"]

# Body write size: docs/performance.md measured write(2) calls up to 256 KiB as the fast ones.
_CHUNK = 256 * 1024
# sendfile() piece: big enough to cost nothing per call, small enough that byte counters
# and stop() keep up while a large file is in flight.
_SENDFILE_PIECE = 4 * 1024 * 1024
# ETag = this many hex digits of the content's sha256: unique for any test, short in logs.
_ETAG_HEX = 32
# SO_LINGER on with 0 s: close() sends RST and drops whatever the kernel still holds to send.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Connections queued before accept(): tests open many at once (concurrency, retries).
_BACKLOG = 128
# What an SPA-style server answers for any unknown path (fault_html_fallback).
_HTML_PAGE = b"<!doctype html><html><head><title>App</title></head><body></body></html>\n"
# Errors that mean "the client, or stop(), closed the socket": expected, never printed.
_GONE_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.EBADF, errno.ENOTCONN}
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)
_UNSATISFIABLE = (-1, -1)


@dataclass
class LogEntry:
    """One request as the origin saw it (appended before any byte of the answer is sent)."""

    method: str
    target: str  # as sent, query included: "/m/model.json?tfjs-format=file"
    path: str  # decoded file path, no leading slash, no query: "m/model.json"
    headers: dict[str, str]  # request headers, names lower-cased
    status: int = 0  # the answer's status, set before its headers go out
    body_bytes: int = 0  # body bytes handed to the socket for this answer


@dataclass(frozen=True)
class Blob:
    size: int
    mtime: float
    etag: str
    ctype: str
    data: bytes | None = None  # in memory (set_file, fallback page), or else:
    path: Path | None = None  # a file under root

    def read(self, start: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[start:start + length]
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(length)


def etag_for(digest: str) -> str:
    return f'"{digest[:_ETAG_HEX]}"'


def _httpdate(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_httpdate(value: str) -> int | None:
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Return (first, last) byte, _UNSATISFIABLE, or None for a header we ignore (RFC 9110)."""
    m = _RANGE_RE.fullmatch(value.strip())
    if m is None or not (m[1] or m[2]):
        return None  # other units, several ranges, garbage: serve the whole file
    if not m[1]:  # suffix: the last n bytes
        n = int(m[2])
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else _UNSATISFIABLE
    first = int(m[1])
    last = int(m[2]) if m[2] else size - 1
    if m[2] and last < first:
        return None
    return (first, min(last, size - 1)) if first < size else _UNSATISFIABLE


def cut(sock: socket.socket) -> None:
    """Abort a connection that another thread serves.

    shutdown() wakes that thread wherever it waits on the socket (a read sees EOF, a write
    or sendfile EPIPE), and the FIN it queues goes out only behind the data already queued;
    with linger 0, the handler's close() then sends RST and drops that data. A bare FIN
    would leave a client of an endless body reading megabytes of backlog, delivered by an
    orphaned socket in zero-window probing, before it learned of the cut.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the client or the handler


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = _BACKLOG
    origin: Origin

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked here, in serve_forever's thread before the handler starts, so that once
        # shutdown() has returned stop() sees every accepted connection, even one whose
        # handler has not run yet.
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"origin:{self.server_address[1]}:{client_address[1]}")
        self.origin._track(request, thread)
        thread.start()  # if it fails, socketserver calls shutdown_request: untracked there

    def shutdown_request(self, request: Any) -> None:
        # A drip or endless handler can see the stop event between two writes and close
        # before stop() reaches its socket; that close must be a cut (RST) as well.
        if self.origin._stopping.is_set():
            cut(request)
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        self.origin._close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        gone = isinstance(exc, OSError) and exc.errno in _GONE_ERRNOS
        if gone or (isinstance(exc, OSError) and self.origin._stopping.is_set()):
            return  # the client hung up or stop() cut the socket: nothing to report
        super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shardsync-origin"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.origin = self.server.origin

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Origin.requests() is the log; stderr stays quiet

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        split = urlsplit(self.path)
        rel = unquote(split.path).removeprefix("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.entry = LogEntry(self.command, self.path, rel, headers)
        self.origin._record(self.entry)
        try:
            self._answer(rel, head)
        except OSError as exc:
            if exc.errno not in _GONE_ERRNOS and not self.origin._stopping.is_set():
                raise
            self.close_connection = True

    def _answer(self, rel: str, head: bool) -> None:
        o = self.origin
        with o._lock:
            redirect = o._redirects.get(rel)
        if redirect is not None:
            return self._small(redirect[1], b"", {"Location": redirect[0]}, head)
        fault = o._take("status", rel)
        if fault is not None:
            after = fault["retry_after"]
            extra = {} if after is None else {"Retry-After": str(after)}
            phrase = http.HTTPStatus(fault["status"]).phrase.encode()
            return self._small(fault["status"], phrase + b"\n", extra, head)
        blob = o._lookup(rel)
        if blob is None:
            if o._take("html_fallback", rel) is None:
                return self._small(404, b"not found\n", {}, head)
            blob = Blob(len(_HTML_PAGE), 0.0, etag_for(hashlib.sha256(_HTML_PAGE).hexdigest()),
                         "text/html; charset=utf-8", data=_HTML_PAGE)

        hdrs = {"Content-Type": blob.ctype, "Accept-Ranges": "bytes"}
        if o.send_etag:
            hdrs["ETag"] = blob.etag
        if o.send_last_modified:
            hdrs["Last-Modified"] = _httpdate(blob.mtime)
        if self._not_modified(blob):
            return self._head(304, hdrs)

        status, first, last = 200, 0, blob.size - 1
        body_from: int | None = None  # a fault: the body starts here, not at ``first``
        rng = None if head else self.headers.get("Range")
        if_range_holds = self._if_range_holds(blob) or o._take("ignore_if_range", rel) is not None
        if rng is not None and if_range_holds and o._take("ignore_range", rel) is None:
            chosen = _parse_range(rng, blob.size)
            if chosen == _UNSATISFIABLE:
                return self._small(416, b"", {"Content-Range": f"bytes */{blob.size}"}, head)
            if chosen is not None:
                status, (first, last) = 206, chosen
                bad = o._take("bad_content_range", rel)
                if bad is not None:
                    first = min(max(first + bad["shift"], 0), last)
                hdrs["Content-Range"] = f"bytes {first}-{last}/{blob.size}"
                if o._take("range_body_from_start", rel) is not None:
                    body_from = 0
        length = last - first + 1
        if head:
            hdrs["Content-Length"] = str(length)
            return self._head(status, hdrs)

        endless = o._take("endless", rel)
        drip = o._take("drip", rel)
        drop = o._take("drop", rel)
        truncate = o._take("truncate", rel)
        if endless is None:
            hdrs["Content-Length"] = str(length)
        elif endless["content_length"] is not None:
            hdrs["Content-Length"] = str(endless["content_length"])
        else:
            hdrs["Connection"] = "close"
        limit = None if drop is None else drop["after"]
        if truncate is not None:
            cut = max(length - truncate["missing"], 0)
            limit = cut if limit is None else min(limit, cut)
        self._head(status, hdrs)

        start = first if body_from is None else body_from
        if endless is None and drip is None and limit is None and blob.path is not None:
            self._sendfile(blob.path, start, length)
            return
        self._write(blob.read(start, length), endless=endless is not None, limit=limit,
                    drip=drip)
        if endless is not None or limit is not None:
            self.close_connection = True
            if drop is not None and drop["reset"]:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                self.origin._close(self.connection)  # with linger 0: an RST instead of a FIN

    def _not_modified(self, blob: Blob) -> bool:
        o = self.origin
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # takes precedence over If-Modified-Since (RFC 9110 13.2.2)
            if inm.strip() == "*":
                return True
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            return o.send_etag and blob.etag in tags  # weak comparison
        ims = self.headers.get("If-Modified-Since")
        if ims is not None and o.send_last_modified:
            when = _parse_httpdate(ims)
            return when is not None and int(blob.mtime) <= when
        return False

    def _if_range_holds(self, blob: Blob) -> bool:
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith('"') or value.startswith("W/"):
            return self.origin.send_etag and value == blob.etag  # strong comparison
        when = _parse_httpdate(value)
        return self.origin.send_last_modified and when == int(blob.mtime)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.entry.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        drip = self.origin._take("drip_headers", self.entry.path)
        if drip is None:
            self.end_headers()
            return
        real, self.wfile = self.wfile, io.BytesIO()  # end_headers() flushes into it
        try:
            self.end_headers()
            head = self.wfile.getvalue()
        finally:
            self.wfile = real
        stopping = self.origin._stopping
        for i in range(len(head)):
            self.connection.sendall(head[i:i + 1])
            if stopping.wait(drip["interval"]):
                # stop(): the answer is unfinished; end the connection as a cut does.
                raise ConnectionAbortedError(errno.ECONNABORTED, "origin stopped")

    def _small(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self._head(status, {**headers, "Content-Type": "text/plain; charset=utf-8",
                            "Content-Length": str(len(body))})
        if body and not head:
            self.origin._count(self.entry, len(body))
            self.connection.sendall(body)

    def _sendfile(self, path: Path, offset: int, length: int) -> None:
        with open(path, "rb") as f:
            end = offset + length
            while offset < end and not self.origin._stopping.is_set():
                n = min(end - offset, _SENDFILE_PIECE)
                self.origin._count(self.entry, n)
                sent = self.connection.sendfile(f, offset, n)
                offset += sent
                if sent < n:  # the file shrank under us: the length we promised is a lie now
                    break
        if offset < end:
            self.close_connection = True

    def _write(self, data: bytes, *, endless: bool, limit: int | None,
               drip: dict[str, Any] | None) -> None:
        if endless:  # repeat the body, in pieces worth a write each
            data = (data or b"\0") * max(1, _CHUNK // max(len(data), 1))
        view = memoryview(data)
        step = drip["chunk"] if drip is not None else _CHUNK
        sent = pos = 0
        stopping = self.origin._stopping
        while not stopping.is_set():
            if limit is not None and sent >= limit:
                break
            if pos >= len(view):
                if not endless:
                    break
                pos = 0
            piece = view[pos:pos + step]
            if limit is not None:
                piece = piece[:limit - sent]
            self.origin._count(self.entry, len(piece))
            self.connection.sendall(piece)
            sent += len(piece)
            pos += len(piece)
            if drip is not None and stopping.wait(drip["interval"]):
                break
        if stopping.is_set():
            self.close_connection = True
