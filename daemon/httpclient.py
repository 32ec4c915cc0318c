"""The httpx client shardsync downloads with, and the limits a download keeps.

:func:`make_client` builds it once per process (tuning the process for downloads,
:mod:`shardsync.daemon.tuning`); :class:`.fetch.Fetcher` uses it with a
:class:`FetchPolicy`, and waits :func:`retry_delay` between tries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from shardsync.store import ShardsyncError

from . import __version__
from .errors import ConnectError, FetchTimeoutError, SlowTransferError, UpstreamError
from .tuning import tune_for_downloads

__all__ = ["Client", "FetchPolicy", "make_client", "retry_delay"]


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and retry behaviour of a :class:`.fetch.Fetcher` (tests use small values)."""

    #: Tries per file: rides out a short outage (with backoff, ~30 s in all) without
    #: stalling a sync for long; the scheduler tries again later anyway.
    attempts: int = 6
    #: First backoff; doubles per retry, with full jitter.
    backoff_base: float = 0.5
    #: Largest backoff between two tries.
    backoff_cap: float = 30.0
    #: A Retry-After longer than this ends this sync's try instead of blocking it.
    retry_after_cap: float = 300.0
    #: TCP connect: a kiosk link is slow but a minute without a SYN-ACK is down.
    connect_timeout: float = 20.0
    #: No byte at all for this long is a stalled transfer.
    read_timeout: float = 30.0
    #: From sending a request to having its answer's status line and headers (redirects
    #: included): each byte resets ``read_timeout``, so without this bound headers
    #: dripped a byte every 10 s held a sync (and a download slot) for the whole
    #: ``file_deadline``. A static file server or CDN answers in well under a second; a
    #: minute is a cold cache miss on a slow link, with room to spare.
    header_timeout: float = 60.0
    #: Least average throughput over ``rate_window`` (bytes/s) of every body, manifests
    #: and files alike: a drip-feeding server must not hold a sync for hours. 8 KiB/s is
    #: below any link a kiosk could use. With ``header_timeout`` it covers the whole
    #: answer: the headers within a bound, then the body at a least rate.
    min_rate: float = 8 * 1024
    #: Window over which ``min_rate`` is measured; long enough to ride out a stall.
    rate_window: float = 60.0
    #: A manifest larger than this is refused (real model.json files are < 10 MB, a big
    #: graph model 10-30 MB). Parsing holds the bytes, not 25 times them
    #: (docs/performance.md, "Parsing manifests").
    max_manifest_bytes: int = 64 * 1024 * 1024
    #: All tries of one file together, waits included: ends this sync's try of a file
    #: that would otherwise hold a download slot for hours. The partial stays, so a huge
    #: file on a slow link still completes over several tries (an hour moves ~450 MB at
    #: 1 Mbit/s).
    file_deadline: float = 3600.0


class Client(httpx.AsyncClient):
    """The client :func:`make_client` builds: an ``httpx.AsyncClient`` that also names
    its connection pool (``pool``), so :class:`.fetch.Fetcher` can send conditional
    checks to it directly (see :meth:`.fetch.Fetcher._get`). Any other client works
    too, without that."""

    def __init__(self, *, pool: httpx.AsyncHTTPTransport, **kwargs: object) -> None:
        super().__init__(transport=pool, **kwargs)  # type: ignore[arg-type]
        self.pool = pool


def make_client(policy: FetchPolicy | None = None, *, max_connections: int = 16) -> Client:
    """The httpx client shardsync uses: redirects followed, identity encoding, timeouts."""
    policy = policy or FetchPolicy()
    tune_for_downloads()
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return Client(
        pool=httpx.AsyncHTTPTransport(limits=limits, trust_env=False),
        follow_redirects=True,
        timeout=httpx.Timeout(
            connect=policy.connect_timeout, read=policy.read_timeout,
            write=policy.read_timeout, pool=None,
        ),
        headers={"User-Agent": f"shardsync/{__version__}", "Accept-Encoding": "identity"},
        trust_env=False,  # a kiosk's proxy env must be configured for us on purpose
    )


def retry_delay(exc: ShardsyncError, attempt: int, policy: FetchPolicy) -> float | None:
    """Seconds to wait before the next try, or None if ``exc`` is not worth retrying."""
    if isinstance(exc, UpstreamError):
        if exc.status is None or not (exc.status == 429 or exc.status >= 500):
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= policy.retry_after_cap else None
    elif isinstance(exc, FetchTimeoutError):
        if isinstance(exc, SlowTransferError):
            return None  # a drip-feeding server will drip again; the scheduler retries later
    elif not isinstance(exc, ConnectError):
        return None
    cap = min(policy.backoff_cap, policy.backoff_base * 2 ** (attempt - 1))
    return random.uniform(0, cap)
