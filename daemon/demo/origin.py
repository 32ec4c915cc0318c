"""An HTTP origin for ``shardsync demo`` and the tests: files, validators and ranges.

shardsync's fetcher has to cope with real origins: ETags and Last-Modified, conditional
requests, byte ranges, redirects to signed URLs. :class:`Origin` serves a directory (plus
in-memory files) over HTTP/1.1 with keep-alive on 127.0.0.1, and counts what it sent, so
the demo can show "0 body bytes" on the wire rather than on the client's word. It uses
only the standard library and runs in daemon threads. Servers that drop, stall, lie or
throttle are the test origin's work (``tests/origin.py``): it subclasses this one and
switches faults on per path, which the request handler (:mod:`.originhandler`) applies.

``python -m shardsync.daemon.demo.origin ROOT [--port N]`` serves a directory until Ctrl-C or
SIGTERM; its first line on stdout is the URL.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shardsync.store import UnsafePathError, check_relpath

from .originhandler import Blob, Handler, LogEntry, Server, cut, etag_for

__all__ = ["LogEntry", "Origin", "main"]

# How often serve_forever() looks at its shutdown flag; bounds the wait in stop().
_POLL_INTERVAL = 0.05
# How long stop() waits for a handler thread it has cut. A cut wakes every wait a handler
# can be in, so it only needs the CPU to finish: running out means a bug (a wait stop() cannot
# wake), and stop() raises instead of hanging or leaving a connection open behind it.
_JOIN_TIMEOUT = 60.0


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
        self._files: dict[str, Blob | None] = {}  # None: removed, hides a file under root
        self._hashes: dict[tuple[str, int, int, int], str] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._log: list[LogEntry] = []
        self._sent: dict[str, int] = {}
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Origin:
        """Bind, listen and serve from a daemon thread; return self. Only once per Origin."""
        if self._server is not None:
            raise RuntimeError("this Origin was already started")
        self._server = Server(self._addr, Handler)
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
                cut(sock)
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
            etag = etag_for(hashlib.sha256(data).hexdigest())
            self._files[path] = Blob(len(data), mtime, etag, _content_type(path), data=data)

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

    def _lookup(self, rel: str) -> Blob | None:
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
        return Blob(st.st_size, st.st_mtime, etag_for(digest), _content_type(rel), path=path)

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
        overrides this with switchable faults (status, drop, truncate, drip, dripped
        headers, endless, ignored or shifted ranges, an HTML fallback), which the
        handler below applies.
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
