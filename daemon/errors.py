"""Errors of the daemon side: config, manifests and the network.

They extend the tree of :mod:`shardsync.store`, whose own errors the daemon imports
from there (one name, one home)::

    ShardsyncError
    ├── ConfigError        the config file is wrong; says file, key and line
    ├── ManifestError      a model.json / weights manifest we refuse (format, dtype, size, path)
    ├── SignatureError     a model's signature we refuse (missing, invalid, untrusted key,
    │                      expired, rollback); the published version stays
    ├── UpstreamError      the origin answered, but not with what we need (4xx, 5xx, bad range)
    ├── FetchTimeoutError  the origin was too slow (deadline, stall)
    │   └── SlowTransferError  below the minimum throughput (not retried: it would drip again)
    ├── ConnectError       the origin could not be reached or dropped the connection
    │   └── TLSError       the TLS handshake failed: says why (unknown CA, expired, ...);
    │                      not retried within a sync (it does not fix itself in 30 s)
    ├── UnreachableError   the control socket: no service answers there, or it is not ours to use
    └── WrongUserError     a one-shot command run by someone other than state_dir's owner
    (and the store's: IntegrityError, NotFoundError, UnsafePathError, LockedError,
    StorageError)

httpx exceptions are translated to these in one place, ``shardsync.daemon.fetch``.
"""

from __future__ import annotations

from typing import Any

from shardsync.store import ShardsyncError

__all__ = [
    "ConfigError",
    "ConnectError",
    "FetchTimeoutError",
    "ManifestError",
    "SignatureError",
    "SlowTransferError",
    "TLSError",
    "UnreachableError",
    "UpstreamError",
    "WrongUserError",
]


class ConfigError(ShardsyncError):
    """The config file is invalid. ``path``, ``key`` and ``line`` say where, when known."""

    def __init__(
        self, reason: str, *, path: str | None = None, key: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.path = path
        self.key = key
        self.line = line

    def __str__(self) -> str:
        where = self.path or "config"
        if self.line is not None:
            where += f":{self.line}"
        if self.key is not None:
            where += f": {self.key}"
        return f"{where}: {self.reason}"


class ManifestError(ShardsyncError):
    """A TF.js manifest that shardsync refuses to mirror."""


class SignatureError(ShardsyncError):
    """A signature (``<manifest>.sig.json``) that does not let the model through: none,
    none valid by a trusted key, malformed, expired, or older than the last accepted."""


class UpstreamError(ShardsyncError):
    """The origin answered with something unusable. ``status`` is the HTTP status, if any."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None,
                 **where: Any) -> None:
        super().__init__(reason, **where)
        self.status = status
        self.retry_after = retry_after


class FetchTimeoutError(ShardsyncError):
    """The origin was too slow: a per-file deadline or the minimum throughput was missed."""


class SlowTransferError(FetchTimeoutError):
    """A transfer ran below the minimum throughput over the rate window."""


class ConnectError(ShardsyncError):
    """The origin could not be reached, or the connection broke mid-transfer."""


class TLSError(ConnectError):
    """The TLS handshake with the origin failed; the reason says what is wrong.

    A ConnectError (the origin could not be used), but not retried within a sync: an
    untrusted CA, a wrong name or an expired certificate do not fix themselves in the
    seconds a retry waits. The scheduler tries again at its next check.
    """


class UnreachableError(ShardsyncError):
    """No service can be asked on the control socket: nothing answers there (not
    running), or this user may not connect. Distinct from an error the service
    answers with, so that ``shardsync status`` can tell "down" from "failing" (exit 3
    against 1, docs/design.md "Exit status")."""


class WrongUserError(ShardsyncError):
    """A command that writes the store, run by a user who does not own state_dir (often
    ``sudo``): what it made there, the owner (the service) could not remove later.
    ``owner`` is that user's name (or uid); the CLI exits 2, as for bad usage."""

    def __init__(self, reason: str, *, owner: str, **where: Any) -> None:
        super().__init__(reason, **where)
        self.owner = owner
