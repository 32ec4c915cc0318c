"""Acquiring the control socket: systemd's, or our own path bound with mode 0660.

With systemd socket activation (``LISTEN_PID`` is this process and ``LISTEN_FDS`` >= 1)
the passed fd 3 is used and the path is neither created nor removed. Otherwise the
path is bound, chmod-ed to 0660, and only then listened on: a connect before
``listen`` is refused, so there is no moment of wider access (whatever the umask). A
socket file left by a crash is replaced if nothing answers on it; if something does,
start-up fails with "already running". Anything at the path that is not a socket is
never removed. A lock file ``<path>.lock`` (kept, empty) serialises two instances
starting at the same moment. On exit the socket file is removed if it is still the
one this process created.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import MutableMapping

from shardsync.store import LockedError, ShardsyncError, StorageError

__all__ = ["SOCKET_MODE", "activation_socket", "open_control_socket"]

log = logging.getLogger(__name__)

# docs/design.md: the service's user and its group (the operators) may connect; nobody else.
SOCKET_MODE = 0o660
# Local clients are few; the kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 64
# sd_listen_fds(3): systemd passes its sockets from this fd on.
SD_LISTEN_FDS_START = 3
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_MAX_SOCKET_PATH = 107


def open_control_socket(path_or_sock: str | os.PathLike[str] | socket.socket,
                        cleanup: contextlib.ExitStack,
                        environ: MutableMapping[str, str] | None = None) -> socket.socket:
    """A listening socket for ``path_or_sock``; ``cleanup`` closes it (and removes a file
    this call created) on exit.

    A ``socket.socket`` is used as is and listened on. For a path, a systemd-activated
    socket (see :func:`activation_socket`, which reads ``environ``, default
    ``os.environ``) takes precedence over binding the path. Raises
    :class:`LockedError` if another instance is running, :class:`ShardsyncError` if a
    non-socket sits at the path or the path is unusable, :class:`StorageError` for
    other OS errors.
    """
    if isinstance(path_or_sock, socket.socket):
        cleanup.callback(path_or_sock.close)
        path_or_sock.listen(LISTEN_BACKLOG)
        return path_or_sock
    path = os.fspath(path_or_sock)
    sock = activation_socket(environ)
    if sock is None:
        return _bind_path(path, cleanup)
    cleanup.callback(sock.close)
    log.info("control socket: using the socket systemd passed (%s) instead of %s",
             sock.getsockname() or "fd 3", path)
    return sock



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
    """Bind and listen on ``path`` as the module docstring says; registers cleanup."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ShardsyncError(f"control socket path is too long for a Unix socket "
                             f"(max {_MAX_SOCKET_PATH} bytes): {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ShardsyncError(f"the directory for the control socket does not exist: {parent}")
    lock_path = path + ".lock"
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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
