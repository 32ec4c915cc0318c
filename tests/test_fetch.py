"""The fetcher (shardsync.daemon.fetch) against a real origin on 127.0.0.1.

One file at a time, into a real store: what goes on the wire (identity encoding,
conditional requests, Range + If-Range), what each kind of answer does to the
partial download on disk (a 200 starts over, a 206 must continue where the partial
ends, a 416 drops it), where reading stops (the expected length + 1), which errors
are retried (connection errors, 5xx, 429, honouring Retry-After) and which are not,
and what a cancel leaves behind (a partial to resume).
"""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from origin import Origin
from storehelpers import assert_published, object_path, sha256, store_at, tfjs_model
from synchelpers import FAST, open_syncer, publish_on, sync_together

from shardsync.daemon.errors import (
    ConnectError,
    FetchTimeoutError,
    SlowTransferError,
    UpstreamError,
)
from shardsync.daemon.fetch import Fetcher, Validators
from shardsync.daemon.httpclient import FetchPolicy, make_client
from shardsync.daemon.resume import resume_start
from shardsync.store import IntegrityError, Store

DATA = bytes(range(256)) * 4096  # 1 MiB, every offset recognisable
PATH = "m/group1-shard1of1.bin"


@asynccontextmanager
async def fetcher(
    tmp_path: Path, policy: FetchPolicy = FAST
) -> AsyncIterator[tuple[Fetcher, Store]]:
    """A Fetcher with ``policy`` over its own client, and a Store in ``tmp_path``."""
    with store_at(tmp_path / "state", tmp_path / "site") as store:
        async with make_client(policy) as client:
            yield Fetcher(client, policy), store


def serve(origin: Origin, data: bytes = DATA, path: str = PATH) -> str:
    origin.set_file(path, data)
    return origin.url_for(path)


def stored(tmp_path: Path, digest: str) -> bytes:
    return object_path(tmp_path / "state", digest).read_bytes()


async def test_a_download_is_hashed_and_stored_raw(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    counted: list[int] = []
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store, max_size=len(DATA), progress=counted.append)
        assert store.ingests() == []
    assert got.digest == sha256(DATA) and got.size == len(DATA) == got.received == sum(counted)
    assert stored(tmp_path, got.digest) == DATA
    assert got.validators.etag and got.validators.last_modified
    (req,) = origin.requests()
    assert req.headers["accept-encoding"] == "identity"
    assert req.headers["user-agent"].startswith("shardsync/")
    assert "range" not in req.headers and "if-none-match" not in req.headers


async def test_validators_make_a_conditional_request(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    async with fetcher(tmp_path) as (f, store):
        first = await f.file(url, store)
        origin.reset_counters()
        again = await f.file(url, store, validators=first.validators)
        assert (again.digest, again.received) == (None, 0)
        (req,) = origin.requests()
        assert (req.headers["if-none-match"], req.status) == (first.validators.etag, 304)
        # Only Last-Modified known (an origin without ETags): If-Modified-Since.
        origin.reset_counters()
        dated = Validators(None, first.validators.last_modified)
        assert (await f.file(url, store, validators=dated)).digest is None
        (req,) = origin.requests()
        assert req.headers["if-modified-since"] == first.validators.last_modified
        # Changed on the origin: the conditional request gets the new bytes.
        new = DATA[::-1]
        serve(origin, new)
        changed = await f.file(url, store, validators=first.validators)
        assert changed.digest == sha256(new) and changed.received == len(new)


async def test_manifest_fetch_and_its_304(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin, b'{"weightsManifest": []}', "m/model.json")
    async with fetcher(tmp_path) as (f, _):
        first = await f.manifest(url)
        assert first.data == b'{"weightsManifest": []}'
        again = await f.manifest(url, first.validators)
        assert again.data is None and again.validators == first.validators
    assert [e.status for e in origin.requests()] == [200, 304]


async def test_a_manifest_over_the_cap_is_refused(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin, b"[" + b" " * 100_000 + b"]", "m/model.json")
    async with fetcher(tmp_path, FetchPolicy(max_manifest_bytes=10_000)) as (f, _):
        with pytest.raises(UpstreamError, match="larger than 10000 bytes") as info:
            await f.manifest(url)
    assert info.value.file == url


# -- resume ------------------------------------------------------------------------------


async def test_a_dropped_transfer_resumes_with_range_and_if_range(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store, max_size=len(DATA))
    assert got.digest == sha256(DATA) and stored(tmp_path, got.digest) == DATA
    first, retry = origin.requests()
    assert retry.headers["range"] == f"bytes={resume_start(300_000)}-"
    assert retry.headers["if-range"] == etag_of(DATA)
    assert retry.status == 206
    overlap = 300_000 - resume_start(300_000)  # re-asked and compared, not appended
    assert origin.bytes_sent() == got.received == len(DATA) + overlap


def etag_of(data: bytes) -> str:
    """The ETag the test origin gives ``data`` (a strong tag from its SHA-256)."""
    return f'"{sha256(data)[:32]}"'


async def test_resume_uses_the_date_when_there_is_no_etag(origin: Origin, tmp_path: Path) -> None:
    origin.send_etag = False
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store)
    assert got.digest == sha256(DATA)
    retry = origin.requests()[1]
    assert email.utils.parsedate_to_datetime(retry.headers["if-range"])
    assert retry.status == 206


async def test_without_validators_a_partial_is_never_resumed(
    origin: Origin, tmp_path: Path
) -> None:
    # Nothing proves the bytes held are the same file's: start over, never append.
    origin.send_etag = origin.send_last_modified = False
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store)
    assert got.digest == sha256(DATA) and stored(tmp_path, got.digest) == DATA
    first, retry = origin.requests()
    assert "range" not in retry.headers and retry.status == 200


async def test_a_cancel_keeps_the_partial_and_the_next_try_resumes(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    origin.fault_drip(PATH, chunk=64 * 1024, interval=0.01, times=1)
    async with fetcher(tmp_path) as (f, store):
        with trio.CancelScope() as scope:
            got_bytes = 0

            def progress(n: int) -> None:
                nonlocal got_bytes
                got_bytes += n
                if got_bytes >= 256 * 1024:
                    scope.cancel()

            await f.file(url, store, progress=progress)
        assert scope.cancelled_caught
        (partial,) = store.ingests()
        assert partial.url == url and partial.durable >= 256 * 1024
        origin.reset_counters()
        got = await f.file(url, store)
    assert got.digest == sha256(DATA)
    (req,) = origin.requests()
    assert req.headers["range"] == f"bytes={resume_start(partial.durable)}-" and req.status == 206
    assert req.body_bytes == len(DATA) - resume_start(partial.durable)


async def test_a_200_to_a_range_request_starts_over(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    origin.fault_ignore_range(PATH, times=1)
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store)
    assert got.digest == sha256(DATA) and stored(tmp_path, got.digest) == DATA
    assert [e.status for e in origin.requests()] == [200, 200]
    assert got.received == 300_000 + len(DATA)


async def test_if_range_mismatch_gets_the_new_file_whole(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    async with fetcher(tmp_path, FetchPolicy(attempts=1)) as (f, store):
        with pytest.raises(ConnectError):
            await f.file(url, store)
        new = DATA[::-1]
        serve(origin, new)
        got = await f.file(url, store)
    assert got.digest == sha256(new) and stored(tmp_path, got.digest) == new
    retry = origin.requests()[-1]
    assert retry.headers["if-range"] == etag_of(DATA) and retry.status == 200


async def test_a_416_drops_the_partial(origin: Origin, tmp_path: Path) -> None:
    # Without ETags, If-Range compares dates: a file replaced by a shorter one within
    # the same second still "matches", and the partial is now past its end.
    origin.send_etag = False
    origin.set_file(PATH, DATA, mtime=1_700_000_000)
    url = origin.url_for(PATH)
    origin.fault_drop(PATH, after=600_000, times=1)
    short = DATA[:500_000]
    async with fetcher(tmp_path, FetchPolicy(attempts=1)) as (f, store):
        with pytest.raises(ConnectError):
            await f.file(url, store)
        origin.set_file(PATH, short, mtime=1_700_000_000)
        got = await f.file(url, store)
    assert got.digest == sha256(short)
    assert [e.status for e in origin.requests()] == [200, 416, 200]


async def resume_against(origin: Origin, tmp_path: Path, fault: str, new: bytes) -> bytes:
    """Drop the first download of PATH at 300 000 bytes, then serve ``new`` and switch on
    the fault ``fault`` (a method of the test origin) for the resume. Asserts that the
    resume's 206 was refused for a fresh 200 and that the stored file is ``new``; returns
    the resume's If-Range."""
    url = serve(origin)
    origin.fault_drop(PATH, after=300_000, times=1)
    async with fetcher(tmp_path, FetchPolicy(attempts=1)) as (f, store):
        with pytest.raises(ConnectError):
            await f.file(url, store)
        serve(origin, new)
        getattr(origin, fault)(PATH, times=1)
        got = await f.file(url, store)
    assert got.digest == sha256(new) and stored(tmp_path, got.digest) == new
    log = origin.requests()
    assert [e.status for e in log] == [200, 206, 200]
    assert log[1].headers["range"] == f"bytes={resume_start(300_000)}-"
    assert "range" not in log[2].headers
    return log[1].headers["if-range"]


async def test_a_206_not_starting_at_the_partial_is_not_appended(
    origin: Origin, tmp_path: Path
) -> None:
    await resume_against(origin, tmp_path, "fault_bad_content_range", DATA)


async def test_a_206_of_another_version_is_not_spliced_onto_the_partial(
    origin: Origin, tmp_path: Path
) -> None:
    # A proxy that ignores If-Range answers the resume with a 206 of the new file, under
    # its new ETag: its bytes from the offset must not be appended to the old beginning.
    if_range = await resume_against(origin, tmp_path, "fault_ignore_if_range", DATA[::-1])
    assert if_range == etag_of(DATA)


async def test_a_206_with_the_wrong_body_is_caught_by_the_overlap(
    origin: Origin, tmp_path: Path
) -> None:
    # Right headers (the asked range, the same ETag), but the body is the file from offset
    # 0 again: the bytes re-asked before the partial's end differ, so the file starts over.
    if_range = await resume_against(origin, tmp_path, "fault_range_body_from_start", DATA)
    assert if_range == etag_of(DATA)


# -- where reading stops -------------------------------------------------------------------


async def test_an_endless_body_stops_past_the_most_the_file_can_be(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    origin.fault_endless(PATH)
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(IntegrityError, match="longer than") as info:
            await f.file(url, store, max_size=len(DATA))
        assert store.ingests() == []  # bytes that cannot be right are not kept
    assert info.value.file == url and info.value.expected == f"at most {len(DATA)}"
    assert len(origin.requests()) == 1  # not retried


async def test_a_content_length_over_the_group_is_refused_before_the_body(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    received: list[int] = []
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(IntegrityError, match="larger than its weight group") as info:
            await f.file(url, store, max_size=len(DATA) - 1, progress=received.append)
        assert store.ingests() == []
    assert (info.value.expected, info.value.actual) == (f"at most {len(DATA) - 1}", len(DATA))
    assert received == []


# -- slow origins and retries ----------------------------------------------------------------


async def test_a_drip_below_min_rate_fails_and_is_not_retried(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    origin.fault_drip(PATH, chunk=1024, interval=0.02)
    policy = FetchPolicy(attempts=3, backoff_base=0.005, min_rate=128 * 1024, rate_window=0.3)
    async with fetcher(tmp_path, policy) as (f, store):
        with pytest.raises(FetchTimeoutError, match="slower than 131072 bytes/s") as info:
            await f.file(url, store)
        (partial,) = store.ingests()  # what came is kept for the next try
        assert partial.durable > 0
    assert info.value.file == url
    assert len(origin.requests()) == 1


async def test_the_per_file_deadline_ends_the_try_and_keeps_the_partial(
    origin: Origin, tmp_path: Path
) -> None:
    url = serve(origin)
    # ~1.3 MB/s: far above min_rate, but 1 MiB takes ~0.8 s, past a 0.3 s deadline.
    origin.fault_drip(PATH, chunk=64 * 1024, interval=0.05)
    policy = FetchPolicy(attempts=3, backoff_base=0.005, min_rate=0, file_deadline=0.3)
    async with fetcher(tmp_path, policy) as (f, store):
        with pytest.raises(FetchTimeoutError, match="deadline") as info:
            await f.file(url, store)
        (partial,) = store.ingests()
        assert 0 < partial.durable < len(DATA)
    assert info.value.file == url
    assert len(origin.requests()) == 1


async def test_a_silent_origin_times_out(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_drip(PATH, chunk=1, interval=10)
    policy = FetchPolicy(attempts=1, read_timeout=0.3, min_rate=0)
    async with fetcher(tmp_path, policy) as (f, store):
        with pytest.raises(FetchTimeoutError, match="timed out") as info:
            await f.file(url, store)
    assert info.value.file == url


# -- a hostile origin's drip: headers and bodies ------------------------------------------

#: The header bound of the drip tests: short, so a try costs a second. The origin drips
#: a header byte every HEADER_DRIP s: far inside FAST's 5 s read timeout, which
#: therefore never fires, while the ~150 bytes of headers would take ~30 s.
HEADER_BOUND = 1.0
HEADER_DRIP = 0.2


@pytest.mark.parametrize("kind", ["manifest", "file", "conditional check"])
async def test_headers_dripped_past_header_timeout_time_out_and_are_retried(
    origin: Origin, tmp_path: Path, kind: str
) -> None:
    url = serve(origin, b'{"format": "graph-model"}' if kind == "manifest" else DATA)
    policy = dataclasses.replace(FAST, attempts=2, header_timeout=HEADER_BOUND)
    async with fetcher(tmp_path, policy) as (f, store):
        validators = None
        if kind == "conditional check":  # the 304 path: straight to the connection pool
            validators = (await f.file(url, store)).validators
            origin.reset_counters()
        origin.fault_drip_headers(PATH, HEADER_DRIP)
        started = trio.current_time()
        with pytest.raises(FetchTimeoutError) as info:
            if kind == "manifest":
                await f.manifest(url)
            else:
                await f.file(url, store, validators=validators)
        took = trio.current_time() - started
    assert not isinstance(info.value, SlowTransferError)
    assert info.value.file == url
    assert f"headers did not arrive within {HEADER_BOUND:g} s" in str(info.value)
    tries = origin.requests()
    assert len(tries) == policy.attempts  # retried, like any timeout
    if kind == "conditional check":
        assert all("if-none-match" in t.headers for t in tries)
    # Each try ends at its bound (plus a backoff of at most 20 ms): far from the ~30 s
    # the drip would hold each one.
    assert took < 3 * HEADER_BOUND * policy.attempts


@pytest.mark.parametrize("kind", ["manifest", "file"])
async def test_a_body_dripped_inside_the_read_timeout_fails_as_slow_at_its_window(
    origin: Origin, tmp_path: Path, kind: str
) -> None:
    # A byte every 3 s: the 5 s read timeout never fires, and the window (0.5 s) ends
    # between two bytes; it must fail then, not when the next byte comes.
    url = serve(origin, b'{"format": "graph-model"}' if kind == "manifest" else DATA)
    origin.fault_drip(PATH, chunk=1, interval=3.0)
    policy = dataclasses.replace(FAST, min_rate=1024.0, rate_window=0.5)
    async with fetcher(tmp_path, policy) as (f, store):
        started = trio.current_time()
        with pytest.raises(SlowTransferError, match="slower than 1024 bytes/s") as info:
            if kind == "manifest":
                await f.manifest(url)
            else:
                await f.file(url, store)
        took = trio.current_time() - started
    assert info.value.file == url
    assert len(origin.requests()) == 1  # a slow transfer is not retried
    assert took < 3.0  # before the origin's second byte


@pytest.mark.parametrize("dripped", ["slow/model.json", "slow/group1-shard1of1.bin"])
async def test_dripped_headers_fail_their_model_and_the_other_in_the_pass_publishes(
    origin: Origin, tmp_path: Path, dripped: str
) -> None:
    good = tfjs_model("graph-model", [{"group1-shard1of1.bin": bytes(range(256)) * 16}],
                      tag="good")
    slow = tfjs_model("graph-model", [{"group1-shard1of1.bin": bytes(4096)}], tag="slow")
    urls = {"good": publish_on(origin, "good", good), "slow": publish_on(origin, "slow", slow)}
    origin.fault_drip_headers(dripped, HEADER_DRIP)
    policy = dataclasses.replace(FAST, header_timeout=HEADER_BOUND)
    started = trio.current_time()
    async with open_syncer(tmp_path, policy=policy) as env:
        results = await sync_together(env, urls)
        took = trio.current_time() - started
        assert results["good"].ok, results["good"].error
        assert_published(env.site, "good", good)
        assert not (env.site / "slow").exists()
    err = results["slow"].error
    assert isinstance(err, FetchTimeoutError) and err.model == "slow", repr(err)
    assert err.file == origin.url_for(dripped)
    assert f"headers did not arrive within {HEADER_BOUND:g} s" in str(err)
    assert len(origin.requests(dripped)) == policy.attempts
    assert took < 3 * HEADER_BOUND * policy.attempts


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_throttling_and_server_errors_are_retried(
    origin: Origin, tmp_path: Path, status: int
) -> None:
    url = serve(origin)
    origin.fault_status(PATH, status, retry_after=None, times=2)
    async with fetcher(tmp_path) as (f, store):
        got = await f.file(url, store)
    assert got.digest == sha256(DATA)
    assert [e.status for e in origin.requests()] == [status, status, 200]


async def test_retry_after_sets_the_wait(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_status(PATH, 503, retry_after=1, times=1)
    stamps: list[float] = []
    async with fetcher(tmp_path) as (f, store):
        async def stamp(request: object) -> None:
            stamps.append(trio.current_time())

        f.client.event_hooks["request"].append(stamp)
        got = await f.file(url, store)
    assert got.digest == sha256(DATA)
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 1.0  # FAST alone waits <= 20 ms


async def test_a_retry_after_beyond_the_cap_ends_the_try(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_status(PATH, 429, retry_after=3600, times=1)
    async with fetcher(tmp_path) as (f, store):
        with trio.fail_after(10):
            with pytest.raises(UpstreamError) as info:
                await f.file(url, store)
    assert (info.value.status, info.value.retry_after) == (429, 3600.0)
    assert len(origin.requests()) == 1


async def test_every_try_failing_gives_the_last_error(origin: Origin, tmp_path: Path) -> None:
    url = serve(origin)
    origin.fault_drop(PATH, after=1000)
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(ConnectError, match="connection") as info:
            await f.file(url, store)
    assert info.value.file == url
    # Every try resumed where the previous one broke off.
    assert [e.headers.get("range") for e in origin.requests()] == [
        None, f"bytes={resume_start(1000)}-", f"bytes={resume_start(1500)}-"]


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_client_errors_are_not_retried(origin: Origin, tmp_path: Path, status: int) -> None:
    url = serve(origin)
    origin.fault_status(PATH, status, retry_after=None, times=None)
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(UpstreamError) as info:
            await f.file(url, store)
    assert info.value.status == status and str(status) in str(info.value)
    assert len(origin.requests()) == 1


async def test_an_html_page_is_not_a_model_file(origin: Origin, tmp_path: Path) -> None:
    url = origin.url_for(PATH)  # nothing there; the origin answers with its app page
    origin.fault_html_fallback()
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(UpstreamError, match="HTML page"):
            await f.file(url, store)
        with pytest.raises(UpstreamError, match="HTML page"):
            await f.manifest(origin.url_for("m/model.json"))
        assert store.ingests() == []


async def test_an_unreachable_origin_is_a_connect_error(tmp_path: Path) -> None:
    with Origin() as gone:
        url = gone.url_for(PATH)
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(ConnectError, match="connection failed") as info:
            await f.file(url, store)
    assert info.value.file == url
    # The system's reason, which trio keeps in an ExceptionGroup below its own message:
    # "refused" (nothing listens) calls for another fix than "unreachable" (no route).
    assert info.value.reason.endswith("(Connection refused)"), info.value.reason


async def test_redirects_are_followed_and_the_partial_keeps_the_canonical_url(
    origin: Origin, tmp_path: Path
) -> None:
    serve(origin, DATA, "cdn/blob.bin")
    url = origin.url_for(PATH)
    origin.redirect(PATH, origin.url_for("cdn/blob.bin?sig=1"))
    origin.fault_drop("cdn/blob.bin", after=300_000, times=1)
    async with fetcher(tmp_path, FetchPolicy(attempts=1)) as (f, store):
        with pytest.raises(ConnectError):
            await f.file(url, store)
        assert [p.url for p in store.ingests()] == [url]
        origin.redirect(PATH, origin.url_for("cdn/blob.bin?sig=2"))  # a fresh signature
        got = await f.file(url, store)
    assert got.digest == sha256(DATA)
    last = origin.requests("cdn/blob.bin")[-1]
    assert last.target.endswith("sig=2")
    assert last.headers["range"] == f"bytes={resume_start(300_000)}-"
    assert origin.bytes_sent("cdn/blob.bin") == len(DATA) + 300_000 - resume_start(300_000)


async def test_a_redirect_loop_is_an_upstream_error(origin: Origin, tmp_path: Path) -> None:
    origin.redirect("a.bin", origin.url_for("b.bin"))
    origin.redirect("b.bin", origin.url_for("a.bin"))
    async with fetcher(tmp_path) as (f, store):
        with pytest.raises(UpstreamError, match="too many redirects") as info:
            await f.file(origin.url_for("a.bin"), store)
        assert store.ingests() == []
    assert info.value.file == origin.url_for("a.bin")
