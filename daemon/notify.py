"""sd_notify in plain Python: tell systemd the service is ready, alive, reloading or stopping.

systemd's ``Type=notify`` services report their state by sending small datagrams
of ``KEY=VALUE`` lines to the Unix socket named by ``$NOTIFY_SOCKET``. The
protocol is simple enough that a dependency (python-systemd, sdnotify) would cost
more than these lines. Without ``$NOTIFY_SOCKET`` (a terminal, a test, a
container without systemd) every method is a no-op, so the service calls them
unconditionally.

Sending never raises into the service and never blocks: the socket is a
non-blocking datagram socket, and a failure (systemd gone, queue full) is logged
once at warning level, then at debug level until a send succeeds again, so a
watchdog ping every few seconds cannot flood the journal.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """One service's channel to systemd's notification socket.

    Build it with :meth:`from_env`. ``address`` is a filesystem path (``str``) or
    an abstract socket name (``bytes`` starting with a NUL byte); ``None`` makes
    every method a no-op. ``watchdog_usec`` is the watchdog period systemd asked
    for, or ``None``.

    The notifier owns one socket, created on the first send; :meth:`close`
    releases it (sends after ``close`` open a new one).
    """

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default ``os.environ``).

        ``NOTIFY_SOCKET`` is an absolute path, or ``@name`` for an abstract socket
        (the ``@`` stands for the leading NUL byte). Unset or empty gives a no-op
        notifier; any other form (systemd's ``vsock:``, a relative path) is logged
        and also gives a no-op notifier, because the service must still run.

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is unset or names this
        process: systemd sets it for the main process, and a child that inherited
        the variables must not ping on its parent's behalf.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address: str | bytes | None
        if not raw:
            address = None
        elif raw.startswith("@"):
            address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            address = raw
        else:
            log.warning("NOTIFY_SOCKET=%r is not a path or an abstract socket; not notifying", raw)
            address = None
        return cls(address, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def ready(self) -> bool:
        """Startup (or a reload) is finished: ``READY=1``."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status``: ``STATUS=text`` (newlines become spaces)."""
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping for ``WatchdogSec=``: ``WATCHDOG=1``."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload started: ``RELOADING=1`` and ``MONOTONIC_USEC`` (for ``Type=notify-reload``).

        Follow it with :meth:`ready` once the reload is done, whatever its outcome.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has started: ``STOPPING=1``."""
        return self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings: half the watchdog period, or None if none.

        Half, as sd_watchdog_enabled(3) recommends, so one late ping is not fatal.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog every :meth:`watchdog_interval` seconds until cancelled.

        Each ping is sent only if ``healthy()`` (when given) returns True at that
        moment; the service passes "the scheduler makes progress", and logs what is
        stuck when it says no. Skipped pings are what make systemd restart the
        service once ``WatchdogSec`` passes; a later True resumes them.

        Returns at once, without calling ``healthy``, if systemd asked for no
        watchdog. Run it in the service's main nursery: it also pings only while the
        trio loop is responsive, which is the other half of what the watchdog checks.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            await trio.sleep(interval)

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram. True if sent (False if disabled or failed).

        Never raises and never blocks: errors are logged and the service carries on.
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self.address)
        except OSError as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "sd_notify to %r failed (%s): %r", self.address, exc, message)
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %r works again", self.address)
            self._failing = False
        return True

    def close(self) -> None:
        """Close the socket, if one was opened."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a pid; ignoring the watchdog", raw_pid)
            return None
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; ignoring the watchdog", raw)
        return None
    return usec if usec > 0 else None
