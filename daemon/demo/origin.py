"""An HTTP origin for ``shardsync demo`` and the tests: files, validators and ranges.

shardsync's fetcher has to cope with real origins: ETags and Last-Modified, conditional
requests, byte ranges, redirects to signed URLs. :class:`Origin` serves a directory (plus
in-memory files) over HTTP/1.1 with keep-alive on 127.0.0.1, and counts what it sent, so
the demo can show "0 body bytes" on the wire rather than on the client's word. It uses
only the standard library and runs in daemon threads. Servers that drop, stall, lie or
throttle are the test origin's work (``tests/origin.py``): it subclasses this one and
switches faults on per path, which the handler here applies.

``python -m shardsync.daemon.demo.origin ROOT [--port N]`` serves a directory until Ctrl-C or
SIGTERM; its first line on stdout is the URL.
"""

from __future__ import annotations

import argparse
import email.utils
import errno
import fnmatch
import hashlib
import http
import http.server
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shardsync.store import UnsafePathError, check_relpath

__all__ = ["LogEntry", "Origin", "main"]

# Body write size: PERF.md measured write(2) calls up to 256 KiB as the fast ones.
_CHUNK = 256 * 1024
# sendfile() piece: big enough to cost nothing per call, small enough that byte counters
# and stop() keep up while a large file is in flight.
_SENDFILE_PIECE = 4 * 1024 * 1024
# ETag = this many hex digits of the content's sha256: unique for any test, short in logs.
_ETAG_HEX = 32
# How often serve_forever() looks at its shutdown flag; bounds the wait in stop().
_POLL_INTERVAL = 0.05
# How long stop() waits for a handler thread it has cut. A cut wakes every wait a handler
# can be in, so it only needs the CPU to finish: running out means a bug (a wait stop() cannot
# wake), and stop() raises instead of hanging or leaving a connection open behind it.
_JOIN_TIMEOUT = 60.0
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
class _Blob:
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


def _etag(digest: str) -> str:
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


class Origin:
    """A threaded HTTP/1.1 origin on ``host:port`` (port 0: the kernel picks one).

    Files are the regular files under ``root`` (by relative path; none without a root)
    plus in-memory overrides from :meth:`set_file`. Every answer to a file carries a
    strong ``ETag`` from its content, ``Last-Modified``, ``Content-Length`` and
    ``Accept-Ranges: bytes``; ``If-None-Match`` / ``If-Modified-Since`` give 304; one
    ``Range`` (``a-b``, ``a-``, ``-n``) gives 206, an unsatisfiable one 416, and
    ``If-Range`` that does not match the current ETag or date gives the full 200. The
    query string is ignored for lookup. Bodies are never compressed. Set
    ``send_etag`` / ``send_last_modified`` to False to imitate origins without them.

    The handler applies faults where :meth:`_take` gives one (never, here; the test
    origin in ``tests/origin.py`` adds the switches). Redirects come first, then a
    status fault; body faults of different kinds combine (a drip that drops after N
    bytes). Use as a context manager, or :meth:`start` / :meth:`stop`. All methods are
    thread-safe.
    """

    def __init__(self, root: Path | str | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.root = Path(root) if root is not None else None
        self.send_etag = True
        self.send_last_modified = True
        self._addr = (host, port)
        self._lock = threading.Lock()
        self._files: dict[str, _Blob | None] = {}  # None: removed, hides a file under root
        self._hashes: dict[tuple[str, int, int, int], str] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._log: list[LogEntry] = []
        self._sent: dict[str, int] = {}
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Origin:
        """Bind, listen and serve from a daemon thread; return self. Only once per Origin."""
        if self._server is not None:
            raise RuntimeError("this Origin was already started")
        self._server = _Server(self._addr, _Handler)
        self._server.origin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"origin:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection (even mid-body), wait for the threads.

        Returns promptly whatever is in flight: drips and endless bodies check the stop
        event, and shutting the sockets down wakes threads blocked in reads and writes.
        The cut is an abortive close (RST): the part of a body still queued in the kernel
        is dropped, so a client gets at most what had already reached it, then EOF or a
        reset, without reading through the megabytes a blocked writer had queued. When
        stop() returns, every connection is closed (``open_connections == 0``); a handler
        that does not finish within ``_JOIN_TIMEOUT`` of its cut raises RuntimeError.
        """
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()  # serve_forever has returned: every accepted socket is tracked
        self._server.server_close()
        with self._lock:  # no handler closes its socket meanwhile (see _close)
            conns = list(self._conns.items())
            for sock, _ in conns:
                _cut(sock)
        for _, thread in conns:
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"origin handler {thread.name} still runs {_JOIN_TIMEOUT} s "
                                   "after stop() cut its connection")
        assert self._thread is not None
        self._thread.join()

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the Origin is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, without a trailing slash."""
        return f"http://{self._addr[0]}:{self.port}"

    def url_for(self, path: str) -> str:
        """The URL of ``path`` (relative; may carry a ``?query``), not percent-encoded."""
        return f"{self.url}/{path.lstrip('/')}"

    @property
    def open_connections(self) -> int:
        """Client connections accepted and not yet closed (idle keep-alive ones included)."""
        with self._lock:
            return len(self._conns)

    # -- content ---------------------------------------------------------------------

    def set_file(self, path: str, data: bytes, *, mtime: float | None = None) -> None:
        """Serve ``data`` at ``path``, over any file under root with that path.

        The ETag follows the content. Last-Modified is ``mtime`` if given, else now, but
        always at least one second after this path's previous set_file, so that every
        change also changes the date validator.
        """
        check_relpath(path)
        data = bytes(data)
        with self._lock:
            if mtime is None:
                mtime = float(int(time.time()))
                old = self._files.get(path)
                if old is not None and mtime <= old.mtime:
                    mtime = old.mtime + 1
            etag = _etag(hashlib.sha256(data).hexdigest())
            self._files[path] = _Blob(len(data), mtime, etag, _content_type(path), data=data)

    def remove_file(self, path: str) -> None:
        """Answer 404 for ``path`` from now on (a file under root is hidden, not deleted)."""
        with self._lock:
            self._files[path] = None

    def redirect(self, path: str, to_url: str | None, *, status: int = 302) -> None:
        """Answer requests for ``path`` (query ignored) with ``status`` to ``to_url``.

        ``None`` removes the redirect. Redirects take precedence over files and faults.
        """
        with self._lock:
            if to_url is None:
                self._redirects.pop(path.lstrip("/"), None)
            else:
                self._redirects[path.lstrip("/")] = (to_url, status)

    def _lookup(self, rel: str) -> _Blob | None:
        with self._lock:
            if rel in self._files:
                return self._files[rel]
        try:
            check_relpath(rel)
        except UnsafePathError:
            return None
        if self.root is None:
            return None
        path = self.root / rel
        try:
            st = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (rel, st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            digest = self._hashes.get(key)
        if digest is None:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            with self._lock:
                self._hashes[key] = digest
        return _Blob(st.st_size, st.st_mtime, _etag(digest), _content_type(rel), path=path)

    # -- accounting ------------------------------------------------------------------

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes handed to the socket since the last reset, for paths matching the
        glob ``path`` (all paths if None). A write the client hung up on still counts."""
        with self._lock:
            if path is None:
                return sum(self._sent.values())
            pattern = path.lstrip("/")
            return sum(n for p, n in self._sent.items() if fnmatch.fnmatchcase(p, pattern))

    def requests(self, path: str | None = None) -> list[LogEntry]:
        """The request log (oldest first), for paths matching the glob ``path`` if given."""
        with self._lock:
            log = list(self._log)
        if path is None:
            return log
        pattern = path.lstrip("/")
        return [e for e in log if fnmatch.fnmatchcase(e.path, pattern)]

    def reset_counters(self) -> None:
        """Empty the request log and zero the byte counters (faults and files stay)."""
        with self._lock:
            self._log.clear()
            self._sent.clear()

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    def _count(self, entry: LogEntry, n: int) -> None:
        with self._lock:
            entry.body_bytes += n
            self._sent[entry.path] = self._sent.get(entry.path, 0) + n

    # -- faults ----------------------------------------------------------------------

    def _take(self, kind: str, rel: str) -> dict[str, Any] | None:
        """The arguments of a fault of ``kind`` for path ``rel``, used up by one; None here.

        The demo's origin serves files faithfully. The test origin (``tests/origin.py``)
        overrides this with switchable faults (status, drop, truncate, drip, endless,
        ignored or shifted ranges, an HTML fallback), which the handler below applies.
        """
        return None

    # -- connections (for stop) ------------------------------------------------------

    def _track(self, sock: socket.socket, thread: threading.Thread) -> None:
        with self._lock:
            self._conns[sock] = thread

    def _close(self, sock: socket.socket) -> None:
        # Under the lock, so that stop() never cuts a socket whose descriptor is being
        # closed, and maybe already reused by another connection.
        with self._lock:
            self._conns.pop(sock, None)
            sock.close()


def _content_type(path: str) -> str:
    return "application/json" if path.endswith(".json") else "application/octet-stream"


def _cut(sock: socket.socket) -> None:
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


class _Server(http.server.ThreadingHTTPServer):
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
            _cut(request)
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        self.origin._close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        gone = isinstance(exc, OSError) and exc.errno in _GONE_ERRNOS
        if gone or (isinstance(exc, OSError) and self.origin._stopping.is_set()):
            return  # the client hung up or stop() cut the socket: nothing to report
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shardsync-origin"
    sys_version = ""
    server: _Server

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
            blob = _Blob(len(_HTML_PAGE), 0.0, _etag(hashlib.sha256(_HTML_PAGE).hexdigest()),
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

    def _not_modified(self, blob: _Blob) -> bool:
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

    def _if_range_holds(self, blob: _Blob) -> bool:
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
        self.end_headers()

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


def main(argv: list[str] | None = None) -> int:
    """Serve ROOT until Ctrl-C or SIGTERM; print the URL as the first line on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m shardsync.daemon.demo.origin",
        description="Serve a directory over HTTP/1.1 with ETags and ranges (a test origin).")
    parser.add_argument("root", type=Path, help="directory to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"not a directory: {args.root}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through stop()
    with Origin(args.root, host=args.host, port=args.port) as origin:
        print(origin.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
