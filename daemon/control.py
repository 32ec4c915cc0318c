"""The control socket: a small HTTP/1.1 server on a Unix socket, for trio, built on h11.

``shardsync status``, ``curl --unix-socket`` and dashboards ask the running service
what it is doing through this socket (docs/design.md, "The control socket"). It serves
JSON over HTTP so that every tool that speaks HTTP can use it, and listens on a
Unix socket so that file permissions (mode 0660: the service's user and group)
decide who may ask; a peer without access never reaches the daemon.

This module ties the transport together and knows nothing about models:
:func:`serve_control` takes the socket (:mod:`shardsync.daemon.control_socket`) and
serves HTTP on it (:mod:`shardsync.daemon.httpserver`: requests, responses, the
router, one connection). Each connection runs in its own task, so a long-poll
(``GET /v1/events``) never holds up other clients; at most
:data:`~shardsync.daemon.httpserver.MAX_CONNECTIONS` are served at once, the next are
answered 503 (:class:`~shardsync.daemon.httpserver.ConnectionLimit`). No route takes a
request body but the pin routes (at most 4 KiB of JSON).

The routes the service declares (the glue owns the handlers)::

    GET  /v1/status                 status document, below
    GET  /v1/models/{name}          one entry of "models", plus "versions": [...]
    POST /v1/sync                   check every model now          -> 202 {"accepted": [...]}
    POST /v1/models/{name}/sync     check one model now            -> 202
    POST /v1/models/{name}/pin      pin (body {"version": ...} optional) -> the pin
    POST /v1/models/{name}/rollback roll back to a kept version and pin it
    POST /v1/models/{name}/unpin    unpin; publishes what the pin held back
    POST /v1/reload                 re-read the config
    GET  /v1/events?since=N&timeout=S   long-poll; EventBatch.to_json(), each event's
                                        "time" with its "time_at" twin
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
         "state": "idle" | "queued" | "checking" | "downloading" | "publishing" | "error",
         "version": "3f2a9c01d2e4" | null,         # current published version
         "source": "https://host/m/model.json" | null,  # url or mirror that last served it
         "signature": {"signed": true | false,     # the current version came signed
                       "keyid": "<hex>" | null,    # by this trusted key
                       "version": 3 | null,        # its signature's version
                       "expires": "2027-03-01T00:00:00Z" | null},
         "last_check": 1718000000.0 | null,        # unix times, each with an RFC 3339
         "last_check_at": "2024-06-10T06:13:20Z" | null,   # twin <key>_at (api.py)
         "last_success": 1718000000.0 | null,
         "last_success_at": "2024-06-10T06:13:20Z" | null,
         "next_check": 1718001800.0 | null,
         "next_check_at": "2024-06-10T06:43:20Z" | null,
         "last_error": "HTTP 503 from ..." | null,
         "progress": {"bytes_done": 0, "bytes_total": 0, "files_done": 0, "files_total": 0},
         "pinned": null | {"version", "since", "since_at", "waiting": "<id>" | null}}
      ]
    }
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import MutableMapping
from typing import Any

import trio

from .control_socket import open_control_socket
from .httpserver import IDLE_TIMEOUT, ConnectionLimit, Handler

__all__ = ["serve_control"]

log = logging.getLogger(__name__)


async def serve_control(
    path_or_sock: str | os.PathLike[str] | socket.socket,
    handler: Handler,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    environ: MutableMapping[str, str] | None = None,
    what: str = "control socket",
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on the control socket until cancelled.

    ``path_or_sock`` is the socket path from the config, or a bound
    ``socket.socket`` (used as is, listened on, closed on exit, never unlinked).
    For a path, a systemd-activated socket (see
    :func:`~shardsync.daemon.control_socket.activation_socket`, which reads
    ``environ``, default ``os.environ``) takes precedence over binding.

    ``task_status.started(address)`` is called once the socket listens, with the
    socket's own address (a path). Set-up errors raise before that:
    :class:`LockedError` if another instance is running, :class:`ShardsyncError`
    if a non-socket sits at the path or the path is unusable, :class:`StorageError`
    for other OS errors. Once started it does not fail: each connection's errors
    are logged and end that connection only.

    On cancellation every connection is closed (a handler in progress is
    cancelled), and a socket file this call created is removed. ``what`` names the
    socket in the log (``metrics_listen`` serves a TCP socket through here too).
    """
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be > 0, got {idle_timeout}")
    with contextlib.ExitStack() as cleanup:
        sock = open_control_socket(path_or_sock, cleanup, environ)
        address = sock.getsockname()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        serve_one = ConnectionLimit(handler, idle_timeout=idle_timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(
                trio.serve_listeners, serve_one, [listener], handler_nursery=nursery))
            log.info("%s listening on %s", what, address)
            task_status.started(address)
