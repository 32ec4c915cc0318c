"""HTTP for shardsync: conditional, resumable, verified downloads over one httpx client.

This is the one place that talks httpx: its exceptions are translated here, once,
into :mod:`shardsync.daemon.errors` (``ConnectError``, ``FetchTimeoutError``,
``UpstreamError``), and nothing else catches them. A failed TLS handshake becomes a
``TLSError`` saying what is wrong (:func:`.tls.describe_tls_error`, from the
``ssl`` error at the bottom of httpx's and trio's wrapping), which is not retried.

What a download does (:meth:`Fetcher.file`):

* sends ``Accept-Encoding: identity`` and stores the raw bytes;
* with validators of the last good sync, asks conditionally (``If-None-Match`` /
  ``If-Modified-Since``): a 304 costs no body;
* with a partial download on disk, resumes with ``Range`` + ``If-Range``; only a 206
  whose ``Content-Range`` starts where the partial ends is appended; a 200 starts
  over; a 416 drops the partial;
* stops reading at the most bytes the file may have + 1 (endless bodies), and
  fails an answer whose headers take longer than ``header_timeout``, a body (a
  manifest's too) slower than ``min_rate``, or a file longer than its deadline;
* retries connection errors, timeouts, 5xx and 429 with exponential backoff and
  full jitter, honouring ``Retry-After``; every retry resumes from the partial;
* hashes while streaming (the store's ingest, in a worker thread one chunk behind the
  receiving loop: :mod:`.bodywriter`), never re-reading the file.

Conditional checks (a request carrying validators, nearly always answered 304) skip
the client's per-request machinery and go to its connection pool directly; see
:meth:`Fetcher._get`, the one place that does.

Bodies are paid for from the fetcher's :class:`.ratelimit.RateLimits` (``max_rate``),
chunk by chunk as they arrive; the time spent waiting for tokens is left out of the
``min_rate`` measure, which judges the origin, not our own limit (a ``max_rate`` below
``min_rate`` would otherwise fail every download as slow). A 304 has no body, so
conditional checks are never slowed. A file whose caller may not take its body now
(``body_allowed``, outside a download window: :mod:`.windows`) ends in
:class:`BodyDeferred` once its headers say a body comes, before any of it is read.

A cancel (shutdown) closes the ingest, which checkpoints it: the next run resumes.

A ``file://`` URL (a mounted USB stick) is read by :mod:`.filesource` instead, in a
worker thread, through the same store ingest and with the same caps: :meth:`manifest`
and :meth:`file` hand it over first thing, so the Syncer verifies it unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

from shardsync.store import Ingest, IntegrityError, ShardsyncError, Store

from . import filesource
from .bodywriter import BodyWriter
from .errors import ConnectError, FetchTimeoutError, SlowTransferError, TLSError, UpstreamError
from .httpanswers import (
    Validators,
    check_status,
    conditional_headers,
    content_length,
    content_range,
    refuse_html,
)
from .httpclient import Client, FetchPolicy, retry_delay
from .ratelimit import RateLimits, take
from .resume import resume_start, same_validators
from .tls import describe_tls_error, find_ssl_error

__all__ = [
    "BodyDeferred",
    "Fetched",
    "Fetcher",
    "ManifestFetch",
    "Validators",
]


T = TypeVar("T")

#: Told of each failed attempt that will be tried again: (the error, the attempt's
#: number from 1, the seconds until the next one).
RetryHook = Callable[[ShardsyncError, int, float], None]

#: Starts from zero allowed per file after the origin refused a resume (416, a 206 at the
#: wrong offset). A restart sends no Range, so it cannot be refused again unless a later
#: failure made a new partial; more than two means the origin is broken. Counted apart
#: from ``attempts``, which budgets failures: a restart is the protocol, not a failure.
_MAX_RESTARTS = 2

#: Most bytes of an error answer's body read for its reason (nginx's pages are ~150 B;
#: their <title> says "No required SSL certificate was sent").
_ERROR_BODY = 1024

@dataclass(frozen=True)
class ManifestFetch:
    """A manifest answer: ``data`` is None when the origin said 304 Not Modified."""

    data: bytes | None
    validators: Validators


@dataclass(frozen=True)
class Fetched:
    """A file answer: ``digest`` is None when the origin said 304 Not Modified."""

    digest: str | None
    size: int
    validators: Validators
    received: int  # body bytes received over the network, resumes and retries included


class BodyDeferred(Exception):  # noqa: N818 - not an error: a file put off for later
    """The answer has a body, and ``body_allowed`` said not now: closed unread.

    Not a ShardsyncError, so it is never retried or reported as a failure; the partial
    on disk (if any) is kept as it was.
    """


class _Restart(Exception):
    """The partial was dropped (416, bad Content-Range): ask again at once, from zero."""


async def _blocking(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run ``fn`` (file work that may fsync or re-hash a partial) in a worker thread.

    The event loop streams every download at once: an fsync on it (the ingest's
    sidecar is written with two) stalls them all for milliseconds, hundreds of times
    in a cold sync. One thread hop per call (~100 µs, docs/performance.md) costs far less. Not
    abandoned on cancel: the call finishes, so the partial stays consistent.
    """
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class _LazyIngest:
    """The partial download of one URL, opened (and locked) only when first needed."""

    def __init__(self, store: Store, url: str, source: str | None) -> None:
        self.store = store
        self.url = url
        self.source = source
        self.ingest: Ingest | None = None

    async def open(self) -> Ingest:
        if self.ingest is None or self.ingest.closed:
            self.ingest = await _blocking(self.store.open_ingest, self.url, source=self.source)
        return self.ingest


class Fetcher:
    """Downloads through one client (the caller owns it and closes it)."""

    def __init__(self, client: httpx.AsyncClient, policy: FetchPolicy | None = None, *,
                 rates: RateLimits | None = None) -> None:
        self.client = client
        self.policy = policy or FetchPolicy()
        #: ``max_rate``'s buckets; the service re-configures them on reload.
        self.rates = rates or RateLimits()
        # For _get's direct path: the pool of a make_client client, and what the client
        # would add to every request (its headers, its timeouts).
        self._pool = client.pool if isinstance(client, Client) else None
        self._headers = dict(client.headers)
        self._timeout = client.timeout.as_dict()

    # -- the one request primitive -------------------------------------------------

    @contextlib.asynccontextmanager
    async def _get(self, url: str, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        """GET ``url`` with ``headers``, streaming; the response is closed on exit.

        A conditional check (``If-None-Match`` / ``If-Modified-Since``) of a
        :func:`make_client` client goes to the client's connection pool directly: a warm
        re-sync is ~1100 of them, nearly all answered 304 with no body, and the client's
        own work per request (merging, cookies, redirect and auth machinery, hooks) was
        ~13 % of that sync's time. Same connections, headers, timeouts and exception
        types (the transport raises httpx's), and the same routing by origin: the pool
        is the client's :class:`.httpclient.OriginTransport`, which adds an origin's
        credentials and headers and picks its TLS settings on either path. What
        differs: the answer's cookies are not kept (shardsync sends none; origins are
        static file servers), and a redirect is not followed here but handed to the
        client from its target, which follows any further ones: the same requests go
        out as through the client alone.
        Everything else (first downloads, resumes, other clients, a client with event
        hooks, which would not see these requests) uses the client.
        """
        hooks = self.client.event_hooks
        deadline = trio.current_time() + self.policy.header_timeout
        if self._pool is not None and not hooks["request"] and not hooks["response"] and (
                "If-None-Match" in headers or "If-Modified-Since" in headers):
            request = httpx.Request("GET", url, headers={**self._headers, **headers},
                                    extensions={"timeout": self._timeout})
            r = await self._headers_by(deadline, url, self._pool.handle_async_request(request))
            r.request = request
            if not r.has_redirect_location:
                try:
                    yield r
                finally:
                    await r.aclose()
                return
            await r.aclose()
            url = str(request.url.join(r.headers["location"]))
        # client.stream() is build_request + send(stream=True) + aclose; spelled out so
        # that only the wait for the headers runs under the deadline, not the body.
        request = self.client.build_request("GET", url, headers=headers)
        r = await self._headers_by(deadline, url, self.client.send(request, stream=True))
        try:
            yield r
        finally:
            await r.aclose()

    async def _headers_by(self, deadline: float, url: str,
                          answer: Awaitable[httpx.Response]) -> httpx.Response:
        """Await ``answer`` (a sent request: its status line and headers) until ``deadline``.

        httpx's read timeout is per read, so an origin dripping its headers a byte at a
        time never trips it; this bounds them as a whole (``header_timeout``, from
        :meth:`_get`'s start, across redirects). Past it: :class:`FetchTimeoutError`,
        which :meth:`_retry_loop` retries like any timeout; the cancelled request's
        connection is closed by httpcore, not returned to the pool.
        """
        with trio.move_on_at(deadline):
            return await answer
        raise FetchTimeoutError(
            f"headers did not arrive within {self.policy.header_timeout:g} s", file=url)

    async def _body(self, r: httpx.Response, url: str) -> AsyncGenerator[bytes, None]:
        """The raw body of ``r``, chunk by chunk, failing a transfer slower than
        ``min_rate`` (:class:`SlowTransferError`, not retried): every body, manifests too.

        Measured per ``rate_window``: a window short of ``min_rate * rate_window`` bytes
        fails at its end, not when the next chunk comes, which a drip-feeder sends just
        inside the read timeout. Time the caller spends with a chunk (writing, hashing)
        counts too, as it does for the origin's connection; time spent waiting for
        ``max_rate``'s tokens does not (the window is moved on by it). Use it under
        :func:`contextlib.aclosing`; its cancel scope never spans a ``yield``.
        """
        policy = self.policy
        need = policy.min_rate * policy.rate_window
        buckets = self.rates.buckets_for(url)
        chunks = r.aiter_raw().__aiter__()
        window_start = trio.current_time()
        window_bytes = 0
        while True:
            due = window_start + policy.rate_window if window_bytes < need else math.inf
            chunk: bytes | None = None
            with trio.move_on_at(due):
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
            now = trio.current_time()
            elapsed = now - window_start
            if chunk is not None:
                window_bytes += len(chunk)
            if chunk is None or (elapsed >= policy.rate_window
                                 and window_bytes < policy.min_rate * elapsed):
                raise SlowTransferError(
                    f"transfer slower than {policy.min_rate:.0f} bytes/s "
                    f"({window_bytes} bytes in {elapsed:.1f} s)", file=url)
            if elapsed >= policy.rate_window:
                window_start, window_bytes = now, 0
            if buckets:
                window_start += await take(buckets, len(chunk))
            yield chunk

    # -- manifests -----------------------------------------------------------------

    async def manifest(self, url: str, validators: Validators | None = None, *,
                       max_size: int | None = None,
                       on_retry: RetryHook | None = None) -> ManifestFetch:
        """GET a manifest (conditionally when ``validators`` are given), with retries.

        Reading stops past ``max_manifest_bytes`` (the policy's cap), or past ``max_size``
        when given (the length a signature lists: an IntegrityError, not retried).
        """
        if filesource.is_file_url(url):
            data, got = await _blocking(filesource.read_manifest, url, validators,
                                        cap=self.policy.max_manifest_bytes, max_size=max_size)
            return ManifestFetch(data, got)

        async def once() -> ManifestFetch:
            headers = conditional_headers(validators)
            async with self._get(url, headers) as r:
                if r.status_code == 304 and validators:
                    await _drain(r)  # the (empty) body's end: else the connection is closed
                    return ManifestFetch(None, validators)
                check_status(r, url, await _error_body(r))
                refuse_html(r, url)
                cap = self.policy.max_manifest_bytes
                data = bytearray()
                async with contextlib.aclosing(self._body(r, url)) as body:
                    async for chunk in body:
                        data += chunk
                        if max_size is not None and len(data) > max_size:
                            raise IntegrityError("manifest is longer than its signature lists",
                                                 file=url, expected=max_size,
                                                 actual=f"more than {max_size}")
                        if len(data) > cap:
                            raise UpstreamError(f"manifest is larger than {cap} bytes",
                                                file=url)
                return ManifestFetch(bytes(data), Validators.of(r))

        return await self._retrying(url, once, on_retry)

    # -- files ---------------------------------------------------------------------

    async def file(
        self,
        url: str,
        store: Store,
        *,
        validators: Validators | None = None,
        max_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        source: str | None = None,
        expected_digest: str | None = None,
        limit: str = "its weight group",
        body_allowed: Callable[[], bool] | None = None,
        on_retry: RetryHook | None = None,
    ) -> Fetched:
        """Download ``url`` into the store (resuming a partial); return its digest.

        With ``validators`` and no partial on disk, asks conditionally and returns
        ``digest=None`` on 304. ``max_size`` is the most bytes the file may have (its
        weight group's size, or the length a signature lists; ``limit`` names which in
        the error): a longer body or Content-Length is an IntegrityError and the
        partial is dropped, reading no further. With ``expected_digest`` (a signature's
        SHA-256) the commit refuses other bytes (IntegrityError, the partial dropped).
        A cancel or other error keeps the partial for resume.
        The stored file leaves a download record naming ``source`` (the manifest URL
        of the model that wants it): see :meth:`Store.downloaded`. With
        ``body_allowed``, an answer with a body (200, 206) is closed unread when it
        returns False: :class:`BodyDeferred` (a 304 is returned as usual).
        """
        if filesource.is_file_url(url):
            read = await _blocking(filesource.read_file, url, store, validators=validators,
                                   max_size=max_size, source=source,
                                   expected_digest=expected_digest, limit=limit)
            if progress is not None and read.size:
                progress(read.size)
            return Fetched(read.digest, read.size, read.validators, read.size)
        # Most checks of a file we hold end in a 304: ask without touching the partial
        # directory (creating, locking and removing an empty partial, and the directory
        # fsync of that removal, cost more than the request). The partial is opened as
        # soon as there is a body to keep, or at once if one may be on disk to resume.
        lazy = _LazyIngest(store, url, source)
        if not validators or store.has_ingest(url):
            await lazy.open()
        received = 0

        def count(n: int) -> None:
            nonlocal received
            received += n
            if progress is not None:
                progress(n)

        try:
            async def once() -> Fetched:
                return await self._file_once(url, lazy, validators, max_size, count,
                                             expected_digest, limit, body_allowed)

            result = await self._retrying(url, once, on_retry)
        finally:
            if lazy.ingest is not None and not lazy.ingest.closed:
                with trio.CancelScope(shield=True):
                    await _blocking(lazy.ingest.close)  # checkpoint: the next try resumes
        return Fetched(result.digest, result.size, result.validators, received)

    async def _file_once(
        self, url: str, lazy: _LazyIngest, validators: Validators | None,
        max_size: int | None, count: Callable[[int], None],
        expected_digest: str | None = None, limit: str = "its weight group",
        body_allowed: Callable[[], bool] | None = None,
    ) -> Fetched:
        held = lazy.ingest
        resume_from = held.offset if (held and held.offset and (held.etag or held.last_modified)) \
            else 0
        overlap = b""
        if resume_from:
            assert held is not None
            overlap = await _blocking(held.tail, resume_from - resume_start(resume_from))
            headers = {"Range": f"bytes={resume_from - len(overlap)}-",
                       "If-Range": held.etag or held.last_modified or ""}
        else:
            headers = conditional_headers(validators)
        async with self._get(url, headers) as r:
            if r.status_code == 304 and validators and not resume_from:
                # Read the (empty) body to its end, or httpcore closes the connection
                # instead of reusing it: a warm check would cost a TCP connect per file.
                await _drain(r)
                if held is not None:
                    await _blocking(held.abort)
                return Fetched(None, 0, validators, 0)
            if r.status_code == 416 and resume_from:
                assert held is not None
                await _blocking(held.start, etag=None, last_modified=None, expected_size=None,
                                offset=0)
                raise _Restart
            check_status(r, url, await _error_body(r))
            refuse_html(r, url)
            if body_allowed is not None and not body_allowed():
                raise BodyDeferred(url)  # _get closes the answer, its body unread
            got = Validators.of(r)
            ingest = await lazy.open()
            if r.status_code == 206 and resume_from:
                start, total = content_range(r, url)
                if start != resume_from - len(overlap) or not same_validators(ingest, got):
                    await _blocking(ingest.start, etag=None, last_modified=None,
                                    expected_size=None, offset=0)
                    raise _Restart
                await _blocking(ingest.start, etag=got.etag or ingest.etag,
                                last_modified=got.last_modified or ingest.last_modified,
                                expected_size=total, offset=resume_from)
            elif r.status_code == 200:
                overlap = b""
                total = content_length(r)
                await _blocking(ingest.start, etag=got.etag, last_modified=got.last_modified,
                                expected_size=total, offset=0)
            else:
                raise UpstreamError(f"unexpected HTTP status {r.status_code}",
                                    status=r.status_code, file=url)
            if total is not None and max_size is not None and total > max_size:
                await _blocking(ingest.abort)
                raise IntegrityError(f"file is larger than {limit}",
                                     file=url, expected=f"at most {max_size}", actual=total)
            cap = total if total is not None else max_size
            await self._stream_body(r, ingest, cap, count, url, overlap)
            if total is not None and ingest.offset < total:
                raise ConnectError(
                    f"connection closed after {ingest.offset} of {total} bytes", file=url)
            size = ingest.offset
            digest = await trio.to_thread.run_sync(ingest.commit, total, expected_digest)
            return Fetched(digest, size, Validators(ingest.etag, ingest.last_modified), 0)

    async def _stream_body(
        self, r: httpx.Response, ingest: Ingest, cap: int | None,
        count: Callable[[int], None], url: str, overlap: bytes = b"",
    ) -> None:
        """Append the body to ``ingest``; its first ``len(overlap)`` bytes must equal
        ``overlap`` (what the partial already ends with) and are not appended: a
        mismatch starts the file over (:class:`_Restart`).

        The loop only receives and checks; a worker thread hashes and writes
        (:class:`.bodywriter.BodyWriter`), one chunk behind. Every exit settles that
        write first, so the ingest is never touched by two threads at once.
        """
        writer = BodyWriter(ingest)
        try:
            await self._receive(r, writer, ingest.offset, cap, count, url, overlap)
            await writer.wait()
        except _Restart:
            await writer.settle()
            await _blocking(ingest.start, etag=None, last_modified=None,
                            expected_size=None, offset=0)
            raise
        except IntegrityError:
            await writer.settle()
            await _blocking(ingest.abort)
            raise
        finally:
            await writer.settle()

    async def _receive(
        self, r: httpx.Response, writer: BodyWriter, offset: int, cap: int | None,
        count: Callable[[int], None], url: str, overlap: bytes,
    ) -> None:
        checked = 0
        async with contextlib.aclosing(self._body(r, url)) as body:
            async for chunk in body:
                view = memoryview(chunk)
                if checked < len(overlap):
                    head = view[:len(overlap) - checked]
                    if head != overlap[checked:checked + len(head)]:
                        raise _Restart
                    checked += len(head)
                    count(len(head))  # received over the network, though not appended
                    view = view[len(head):]
                    if not view:
                        continue
                offset += len(view)
                if cap is not None and offset > cap:
                    # Checked before writing: bytes past the most the file may have (a
                    # signature's length, the group's size) never reach the disk.
                    count(len(view))
                    raise IntegrityError("body is longer than the file can be (endless body?)",
                                         file=url, expected=f"at most {cap}",
                                         actual=f"more than {cap}")
                await writer.write(view)
                count(len(view))

    # -- retries -------------------------------------------------------------------

    async def _retrying(self, url: str, once: Callable[[], Awaitable[T]],
                        on_retry: RetryHook | None = None) -> T:
        """Run ``once`` with retries, within ``file_deadline`` (FetchTimeoutError after).
        ``on_retry(error, attempt, delay)`` hears of each failed attempt that will be
        tried again, before the wait: status can say why a check takes long."""
        deadline = self.policy.file_deadline
        with trio.move_on_after(deadline):
            return await self._retry_loop(url, once, on_retry)
        raise FetchTimeoutError(f"not done within the per-file deadline ({deadline:g} s)",
                                file=url)

    async def _retry_loop(self, url: str, once: Callable[[], Awaitable[T]],
                          on_retry: RetryHook | None) -> T:
        """Run ``once`` with retries; translate httpx errors (the one place that does)."""
        policy = self.policy
        attempt = restarts = 0
        while True:
            try:
                try:
                    return await once()
                except httpx.TimeoutException as exc:
                    raise FetchTimeoutError(f"timed out ({type(exc).__name__})",
                                            file=url) from exc
                except httpx.TooManyRedirects as exc:
                    raise UpstreamError("too many redirects", file=url) from exc
                except httpx.TransportError as exc:
                    tls = find_ssl_error(exc)
                    if tls is not None:
                        raise TLSError(describe_tls_error(tls), file=url) from exc
                    raise ConnectError(f"connection failed: {_reason(exc)}", file=url) from exc
                except httpx.InvalidURL as exc:
                    raise UpstreamError(f"invalid URL: {exc}", file=url) from exc
            except _Restart:
                restarts += 1
                if restarts > _MAX_RESTARTS:
                    raise UpstreamError("the server kept refusing to resume", file=url) from None
                continue
            except ShardsyncError as exc:
                attempt += 1
                delay = retry_delay(exc, attempt, policy)
                if delay is None or attempt >= policy.attempts:
                    raise
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                await trio.sleep(delay)


def _reason(exc: BaseException) -> str:
    """The first non-empty message down ``exc``'s chain (httpx's is often empty: trio's
    ``BrokenResourceError()`` keeps its reason in ``__cause__``), else its type's name,
    followed by the system's reasons it does not already give (:func:`_os_reasons`)."""
    e: BaseException | None = exc
    reason = type(exc).__name__
    while e is not None:
        if str(e):
            reason = str(e) if e is exc else f"{type(e).__name__}: {e}"
            break
        e = e.__cause__ or e.__context__
    more = [r for r in _os_reasons(exc) if r.lower() not in reason.lower()]
    return f"{reason} ({', '.join(more)})" if more else reason


def _os_reasons(exc: BaseException) -> list[str]:
    """The distinct system reasons (``os.strerror``) of the OSErrors in ``exc``'s chain
    and exception groups.

    trio's connect gives "all attempts to connect to HOST:PORT failed" and keeps why
    (one OSError per address tried) in an ExceptionGroup below it: "Network is
    unreachable" and "Connection refused" call for different fixes, so status says it.
    """
    out: list[str] = []
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            text = os.strerror(e.errno)  # trio's strerror repeats the address
            if text not in out:
                out.append(text)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return out


async def _error_body(r: httpx.Response) -> bytes:
    """The first :data:`_ERROR_BODY` bytes of an error answer's body, for its reason;
    empty for any other answer (whose body is the file)."""
    if r.status_code < 400:
        return b""
    data = bytearray()
    async for chunk in r.aiter_raw():
        data += chunk
        if len(data) >= _ERROR_BODY:
            break
    return bytes(data[:_ERROR_BODY])


async def _drain(r: httpx.Response) -> None:
    """Read a (304's empty) body to its end, so the connection goes back to the pool.

    Raw, not ``aread()``: that goes through the decoders and keeps the bytes, ~8 % of a
    warm re-sync's CPU for nothing.
    """
    async for _ in r.aiter_raw():
        pass
