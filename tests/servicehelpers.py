"""Helpers for the service tests and benchmark: ``shardsync run`` as a real subprocess.

:class:`ServiceProcess` starts ``python -m shardsync.daemon.cli run -c CONFIG`` with a
clean environment, its log (stderr) in a file, and talks to it only the ways an
operator or systemd would: the control socket (:class:`ControlClient`), signals, and
sd_notify datagrams received on a real ``AF_UNIX`` socket (:class:`NotifySocket`).

Waiting is done on what the service reports, never on sleeps: an event in the event
log (a long-poll on ``/v1/events``), a status that matches, a notify message. Every
wait has a generous deadline (the machine is shared) and fails with the service's log
tail, so a failure says what the service was doing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from synchelpers import cli_command, write_config

from shardsync.daemon.client import ControlClient
from shardsync.daemon.config import load_config

__all__ = [
    "WAIT",
    "NotifySocket",
    "ServiceProcess",
    "edit_config",
    "replace_text",
    "short_dir",
]

#: Default deadline of every wait: far above what any step takes on an idle machine
#: (well under a second), so only a real hang fails, not a loaded machine.
WAIT = 60.0
#: Pause between two status polls: often enough to see a state that lasts ~1 s.
_POLL = 0.02
#: Log lines quoted in a failure message.
_LOG_TAIL = 40


@contextmanager
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp with a short path: a Unix socket's path must fit in
    107 bytes, and pytest's tmp_path may not leave room."""
    d = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def edit_config(config: Path, models: Mapping[str, str], **keys: Any) -> None:
    """Replace ``config`` as editors save: write a new file beside it, rename it over.

    The content is :func:`synchelpers.write_config`'s for ``models`` and ``keys``
    (relative paths in it resolve against ``config``'s directory, where it lands).
    """
    scratch = config.parent / ".edit"
    new = write_config(scratch, models, **keys)
    os.replace(new, config)
    scratch.rmdir()


def replace_text(config: Path, text: str) -> None:
    """Rename a file holding ``text`` over ``config`` (a save of any content, broken too)."""
    tmp = config.with_name(f".{config.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, config)


# Run by the interpreter that then execs the service (same pid): the passed socket
# becomes fd 3, and LISTEN_PID names the pid the service will have.
_ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


# Run by the interpreter that then execs the service (same pid): the soft limit on open
# files lowered to argv[1], the hard limit kept (as systemd's LimitNOFILE=1024:524288).
_LIMIT_FILES = """\
import os, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class NotifySocket:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``.

    ``abstract`` binds ``path`` in the abstract namespace instead (as ``@path``).
    A thread reads every datagram as it comes (as systemd does: a receiver that falls
    behind fills the socket's queue, and the service's non-blocking sends are then
    dropped), parsed into ``{KEY: VALUE}`` (:attr:`messages`, in arrival order).
    :meth:`wait_for` waits until one matches.
    """

    def __init__(self, path: Path, *, abstract: bool = False) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:  # Linux's abstract namespace: no file; "@name" in NOTIFY_SOCKET
            self._sock.bind(b"\0" + str(path).encode())
            self.address = "@" + str(path)
        else:
            self._sock.bind(str(path))
            self.address = str(path)
        self.messages: list[dict[str, str]] = []
        self._seen = 0  # messages already returned by wait_for
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return  # closed
            if not data:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._arrived:
                self.messages.append(fields)
                self._arrived.notify_all()

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(5)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def drain(self, quiet: float = 0.1) -> list[dict[str, str]]:
        """Wait until nothing arrives for ``quiet`` seconds; return every message so far."""
        with self._arrived:
            while self._arrived.wait(quiet):
                pass
            return list(self.messages)

    def wait_for(self, key: str, value: str | None = None, *, timeout: float = WAIT
                 ) -> dict[str, str]:
        """The next message (after the last one returned) that sets ``key`` (to ``value``)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                while self._seen < len(self.messages):
                    m = self.messages[self._seen]
                    self._seen += 1
                    if key in m and (value is None or m[key] == value):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value or '*'} from the service within "
                                         f"{timeout} s; got {self.messages[-20:]}")
                self._arrived.wait(left)

    def keys(self) -> list[str]:
        """The key of each message so far that is not STATUS/WATCHDOG (the state changes,
        in order): READY, RELOADING, STOPPING. Waits for what is on its way first."""
        out = []
        for m in self.drain(0.05):
            out += [k for k in m if k in ("READY", "RELOADING", "STOPPING")]
        return out


class ServiceProcess:
    """``shardsync run -c config`` in a subprocess (see the module docstring).

    ``env`` adds to a minimal environment (PATH, HOME, LANG, TMPDIR); ``notify`` sets
    ``NOTIFY_SOCKET``; ``listen`` is passed as systemd passes a socket (fd 3,
    ``LISTEN_FDS``, ``LISTEN_PID``); ``nofile`` lowers the soft ``RLIMIT_NOFILE`` the
    service runs under (as systemd's default soft limit of 1024 does, lower). The log
    goes to ``log_path``. Use as a context manager: on exit a process still running is
    killed. ``netns`` runs it in that network namespace (``ip netns exec``, which execs:
    the pid is the service's); its control and notify sockets, being files, are reached
    from here all the same.
    """

    def __init__(self, config: Path, log_path: Path, *, notify: NotifySocket | None = None,
                 env: Mapping[str, str] | None = None,
                 listen: socket.socket | None = None, nofile: int | None = None,
                 netns: str | None = None) -> None:
        self.config = config
        self.nofile = nofile
        self.netns = netns
        self.socket = str(load_config(config).socket)
        if listen is not None:  # socket activation: the client connects to that socket
            self.socket = listen.getsockname()
        self.listen = listen
        self.log_path = log_path
        self.notify = notify
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: ControlClient | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, wait_ready: bool = True) -> ServiceProcess:
        """Start the process; with ``wait_ready`` wait for READY=1 (needs ``notify``)."""
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(self.extra_env)
        if self.notify is not None:
            env["NOTIFY_SOCKET"] = self.notify.address
        argv = cli_command("run", "-c", self.config)
        pass_fds: tuple[int, ...] = ()
        if self.listen is not None:
            # As systemd passes a socket: the listening socket as fd 3, LISTEN_FDS=1 and
            # LISTEN_PID naming the service's own pid (the shell's, kept across exec).
            fd = fcntl.fcntl(self.listen.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
            pass_fds = (fd,)
            argv = [sys.executable, "-c", _ACTIVATE, str(fd), *argv[1:]]
        if self.nofile is not None:
            argv = [sys.executable, "-c", _LIMIT_FILES, str(self.nofile), *argv[1:]]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, pass_fds=pass_fds)
        finally:
            for fd in pass_fds:
                os.close(fd)
        if wait_ready:
            assert self.notify is not None
            self.notify.wait_for("READY", "1")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM, then wait for the exit; returns the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"shardsync did not exit within {timeout} s\n"
                                 f"{self.log_tail()}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return "service log (tail):\n" + "\n".join(self.log().splitlines()[-_LOG_TAIL:])

    def check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"shardsync exited with status {code}\n{self.log_tail()}")

    # -- the control socket ------------------------------------------------------------

    @property
    def client(self) -> ControlClient:
        if self._client is None:
            self._client = ControlClient(self.socket)
        return self._client

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def get_text(self, path: str) -> str:
        """``GET path`` as text (``/metrics`` is not JSON), asserting a 200."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket),
                          base_url="http://localhost", timeout=WAIT) as client:
            response = client.get(path)
        assert response.status_code == 200, response.text
        return response.text

    def model(self, name: str) -> dict[str, Any]:
        """This model's entry in ``/v1/status``."""
        for m in self.status()["models"]:
            if m["name"] == name:
                return m
        raise AssertionError(f"no model {name!r} in the status")

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str, *,
                    timeout: float = WAIT) -> dict[str, Any]:
        """Poll ``/v1/status`` until ``predicate(status)``; return that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"status never showed {what} within {timeout} s; last "
                                     f"{status}\n{self.log_tail()}")
            time.sleep(_POLL)

    def last_event_id(self) -> int:
        """The id of the newest event in the log now."""
        cursor = 0
        while True:
            batch = self.client.get("/v1/events", since=cursor, timeout=0)
            if not batch["events"]:
                return batch["next"]
            cursor = batch["next"]

    def events_since(self, cursor: int) -> list[dict[str, Any]]:
        """Every event after ``cursor`` in the log now (no waiting)."""
        out: list[dict[str, Any]] = []
        while True:
            batch = self.client.get("/v1/events", since=cursor, timeout=0)
            if not batch["events"]:
                return out
            assert not batch["truncated"]
            out += batch["events"]
            cursor = batch["next"]

    def wait_event(self, type: str, *, model: str | None = None, since: int = 0,
                   timeout: float = WAIT) -> dict[str, Any]:
        """The first event of ``type`` (for ``model``) after cursor ``since``, long-polling
        ``/v1/events`` until it comes."""
        deadline = time.monotonic() + timeout
        cursor = since
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type} event (model {model}) after #{since} within "
                                     f"{timeout} s: {self.events_since(since)}\n"
                                     f"{self.log_tail()}")
            poll = min(left, 10.0)
            batch = self.client.request("GET", "/v1/events", params={
                "since": cursor, "timeout": poll}, timeout=poll + 10)
            for e in batch["events"]:
                if e["type"] == type and (model is None or e["model"] == model):
                    return e
            cursor = batch["next"]
            self.check_alive()
