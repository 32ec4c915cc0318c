"""The httpx client shardsync downloads with, and the limits a download keeps.

:func:`make_client` builds it once per process (tuning the process for downloads,
:mod:`shardsync.daemon.tuning`); :class:`.fetch.Fetcher` uses it with a
:class:`FetchPolicy`, and waits :func:`retry_delay` between tries.

Origins (``[[origin]]`` blocks, and the ``user:password@`` of model URLs) are applied
by the client's transport, :class:`OriginTransport`, per request, from the request's
own URL: the longest matching prefix chooses the connection pool (its trust store,
client certificate and proxy) and the headers added (``Authorization``, ``headers``).
Because they are added below the client, to a copy of each request, the client never
holds them: a redirect it follows is built without them, and gets only those of the
prefix *its* URL is under. So credentials reach only URLs under their prefix, also
after redirects, whatever httpx's own redirect rules strip. The transport also refuses
a redirect from https to http (the next request would go out in clear). Pools are
shared by origins with the same TLS and proxy settings; one pool serves every URL
that no ``[[origin]]`` covers, verified against the system trust store
(:func:`.tls.tls_context`). The environment is never read (``trust_env=False``): a
kiosk's ``HTTPS_PROXY`` must be configured for shardsync on purpose.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from shardsync.store import ShardsyncError

from . import __version__
from .config import ModelConfig, OriginConfig, origin_for
from .errors import ConnectError, FetchTimeoutError, SlowTransferError, TLSError, UpstreamError
from .tls import tls_context
from .tuning import tune_for_downloads
from .urls import origin_key, redact_url

__all__ = ["Client", "FetchPolicy", "OriginTransport", "make_client", "retry_delay"]


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


# What makes two origins' connections interchangeable: trust, client certificate,
# proxy, and each file's identity (a CA or certificate replaced on disk makes a new
# pool at the next reload; the old one is closed with the client).
_PoolKey = tuple[object, ...]


@dataclass(frozen=True)
class _Route:
    prefix: str
    pool: _PoolKey
    headers: tuple[tuple[str, str], ...]


def _file_id(p: Path | None) -> tuple[object, ...]:
    if p is None:
        return (None,)
    try:
        st = os.stat(p)
    except OSError:
        return (str(p),)
    return (str(p), st.st_ino, st.st_mtime_ns, st.st_size)


def _pool_key(origin: OriginConfig | None) -> _PoolKey:
    if origin is None or not (origin.ca_file or origin.client_cert or origin.proxy):
        return ()
    return (*_file_id(origin.ca_file), *_file_id(origin.client_cert),
            *_file_id(origin.client_key), origin.proxy)


def _origin_headers(origin: OriginConfig | None) -> tuple[tuple[str, str], ...]:
    if origin is None:
        return ()
    auth = (("Authorization", f"Bearer {origin.token}"),) if origin.token else ()
    return (*origin.headers, *auth)


class OriginTransport(httpx.AsyncBaseTransport):
    """Sends each request through the pool, and with the headers, of the ``[[origin]]``
    whose prefix its URL is under (the longest); see the module docstring.

    :meth:`configure` replaces the origins (a reload): requests from then on use the new
    ones; pools still in use by a request keep serving it and are closed with the
    transport.
    """

    def __init__(self, limits: httpx.Limits, origins: Sequence[OriginConfig] = (),
                 models: Sequence[ModelConfig] = ()) -> None:
        self._limits = limits
        self._pools: dict[_PoolKey, httpx.AsyncHTTPTransport] = {}
        self._retired: list[httpx.AsyncHTTPTransport] = []
        self._routes: list[_Route] = []
        self._default = self._pool_for(None)
        self.configure(origins, models)

    def _pool_for(self, origin: OriginConfig | None) -> httpx.AsyncHTTPTransport:
        key = _pool_key(origin)
        pool = self._pools.get(key)
        if pool is None:
            o = origin if key else None
            ctx = tls_context(o.ca_file, o.client_cert, o.client_key) if o else tls_context()
            pool = self._pools[key] = httpx.AsyncHTTPTransport(
                verify=ctx, limits=self._limits, trust_env=False,
                proxy=httpx.Proxy(o.proxy) if o and o.proxy else None)
        return pool

    def configure(self, origins: Sequence[OriginConfig],
                  models: Sequence[ModelConfig] = ()) -> None:
        """Use ``origins``, and the userinfo of ``models``' URLs (``url`` and each
        mirror, :meth:`.ModelConfig.sources`), from now on.

        A model URL's ``user:password@`` becomes ``Authorization: Basic`` for the URLs
        in its manifest's directory (where TF.js finds the shards), with the trust and
        proxy of the ``[[origin]]`` covering it, replacing that origin's token there.
        Raises what :func:`.tls.tls_context` raises for a file that changed since the
        config was read.
        """
        origins = tuple(origins)
        routes: list[_Route] = []
        for m in (s for model in models for s in model.sources()):  # mirrors too
            if m.userinfo is None:
                continue
            key = origin_key(m.url).partition("?")[0]
            prefix = key[: key.rindex("/") + 1]
            covering = origin_for(origins, m.url)
            basic = base64.b64encode(":".join(m.userinfo).encode()).decode("ascii")
            headers = tuple(h for h in _origin_headers(covering)
                            if h[0].lower() != "authorization")
            routes.append(_Route(prefix, _pool_key(covering),
                                 (*headers, ("Authorization", f"Basic {basic}"))))
        routes += [_Route(o.prefix, _pool_key(o), _origin_headers(o)) for o in origins]
        wanted = {r.pool for r in routes} | {()}
        for o in origins:
            self._pool_for(o)
        for unused in [k for k in self._pools if k not in wanted]:
            self._retired.append(self._pools.pop(unused))
        # longest first; for one prefix, a model's userinfo (listed first: the sort is
        # stable) before the origin of that same prefix
        self._routes = sorted(routes, key=lambda r: -len(r.prefix))

    def _route(self, url: httpx.URL) -> tuple[httpx.AsyncHTTPTransport,
                                              tuple[tuple[str, str], ...]]:
        if not self._routes:  # no [[origin]], no userinfo: skip parsing the URL
            return self._default, ()
        key = origin_key(str(url))
        for r in self._routes:
            if key.startswith(r.prefix):
                return self._pools[r.pool], r.headers
        return self._default, ()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool, extra = self._route(request.url)
        if extra:
            # A copy: the client builds a redirect from the request it sent, and must
            # not find these headers there.
            # An origin's header replaces the client's own of that name (User-Agent).
            names = {name.lower() for name, _ in extra}
            headers = [(k, v) for k, v in request.headers.multi_items()
                       if k.lower() not in names]
            request = httpx.Request(request.method, request.url, headers=[*headers, *extra],
                                    stream=request.stream, extensions=request.extensions)
        response = await pool.handle_async_request(request)
        if request.url.scheme == "https" and response.has_redirect_location:
            target = request.url.join(response.headers["location"])
            if target.scheme != "https":
                await response.aclose()
                raise UpstreamError(
                    f"refused a redirect from https to {target.scheme} "
                    f"({redact_url(str(target))}): the request would leave TLS",
                    status=response.status_code, file=redact_url(str(request.url)))
        return response

    async def aclose(self) -> None:
        for pool in [*self._pools.values(), *self._retired]:
            await pool.aclose()


class Client(httpx.AsyncClient):
    """The client :func:`make_client` builds: an ``httpx.AsyncClient`` that also names
    its transport (``pool``, an :class:`OriginTransport`), so :class:`.fetch.Fetcher` can
    send conditional checks to it directly (see :meth:`.fetch.Fetcher._get`): they are
    routed by origin exactly as the client's own requests. Any other client works too,
    without that."""

    def __init__(self, *, pool: OriginTransport, **kwargs: object) -> None:
        super().__init__(transport=pool, **kwargs)  # type: ignore[arg-type]
        self.pool = pool

    def configure(self, origins: Sequence[OriginConfig],
                  models: Sequence[ModelConfig] = ()) -> None:
        """Apply a reloaded config's origins (see :meth:`OriginTransport.configure`)."""
        self.pool.configure(origins, models)


def make_client(policy: FetchPolicy | None = None, *, max_connections: int = 16,
                origins: Sequence[OriginConfig] = (),
                models: Sequence[ModelConfig] = ()) -> Client:
    """The httpx client shardsync uses: redirects followed, identity encoding, timeouts,
    the system trust store, and ``origins`` (with the userinfo of ``models``' URLs)
    applied per request (:class:`OriginTransport`)."""
    policy = policy or FetchPolicy()
    tune_for_downloads()
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return Client(
        pool=OriginTransport(limits, origins, models),
        follow_redirects=True,
        timeout=httpx.Timeout(
            connect=policy.connect_timeout, read=policy.read_timeout,
            write=policy.read_timeout, pool=None,
        ),
        headers={"User-Agent": f"shardsync/{__version__}", "Accept-Encoding": "identity"},
        trust_env=False,  # a kiosk's proxy env must be configured for us on purpose
    )


def retry_delay(exc: ShardsyncError, attempt: int, policy: FetchPolicy) -> float | None:
    """Seconds to wait before the next try, or None if ``exc`` is not worth retrying
    (a TLSError never is: see :class:`.errors.TLSError`)."""
    if isinstance(exc, TLSError):
        return None
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
