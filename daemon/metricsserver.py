"""``metrics_listen``: ``GET /metrics`` over TCP, for a Prometheus that cannot reach the
control socket.

The control socket is mode 0660 on purpose (it can trigger syncs and reloads), so a
Prometheus server, or an nginx proxying for one, is not let in there. This listener
serves only what is harmless to anyone who can reach the port: the handler it is
given answers ``GET``/``HEAD /metrics`` alone (:meth:`ControlApi.metrics_router`),
so any other path is 404 and any other method 405.

It is not a second HTTP server: the TCP socket bound here is handed to
:func:`~shardsync.daemon.control.serve_control`, which serves it exactly as it serves
the Unix socket, with the same limits (headers at most 16 KiB, a request body
refused unread with 413, each request within 30 s or the connection is closed, and
whatever connection limit the control socket keeps).

Binding happens before listening (``serve_control`` calls ``listen``), with
``SO_REUSEADDR`` so a restart does not wait out TIME_WAIT, and ``IPV6_V6ONLY`` for an
IPv6 address so ``[::]`` means IPv6 only, as it reads. A bind failure (the port is
taken, a privileged port, an address this host does not have) is a
:class:`ShardsyncError` naming ``metrics_listen``: the service does not start
rather than run without the metrics the operator asked for.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import trio

from shardsync.store import ShardsyncError

from .control import serve_control
from .httpserver import Handler

__all__ = ["bind_metrics_socket", "format_address", "serve_metrics"]


def format_address(address: tuple[str, int]) -> str:
    """``host:port`` as the config spells it (``[::1]:9464`` for IPv6)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_metrics_socket(address: tuple[str, int]) -> socket.socket:
    """A TCP socket bound (not yet listening) to ``address``; ShardsyncError if it cannot be."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ShardsyncError(f"metrics_listen: cannot listen on {format_address(address)}: "
                             f"{exc.strerror or exc}") from exc
    return sock


async def serve_metrics(address: tuple[str, int], handler: Handler, *,
                        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on TCP ``address`` until cancelled.

    ``task_status.started(sockname)`` once it listens; a bind failure raises before
    that (see the module docstring). On cancellation the socket is closed.
    """
    sock = bind_metrics_socket(address)
    async with trio.open_nursery() as nursery:
        sockname = await nursery.start(functools.partial(
            serve_control, sock, handler,
            what="metrics_listen (GET /metrics only)"))
        task_status.started(sockname)
