"""max_rate (shardsync.daemon.ratelimit): token buckets, then real downloads under them.

The buckets' arithmetic runs under trio's autojump MockClock (exact times, no waiting);
the rate a download really gets is measured against the real origin on 127.0.0.1,
through the real fetcher and store, over downloads of about three seconds: within
10 % above the limit (the promise), and no less than half of it (a loaded 2-core
machine is slow, never fast).
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import trio
from origin import Origin
from storehelpers import sha256, store_at
from synchelpers import FAST

from shardsync.daemon.config import Config, parse_config
from shardsync.daemon.fetch import Fetcher
from shardsync.daemon.httpclient import FetchPolicy, make_client
from shardsync.daemon.ratelimit import BURST_SECONDS, RateLimits, TokenBucket, take

# -- the buckets ----------------------------------------------------------------------


async def test_a_bucket_pays_reads_at_its_rate(autojump_clock: object) -> None:
    bucket = TokenBucket(1000)
    start = trio.current_time()
    for _ in range(8):
        await bucket.take(250)
    # 2000 bytes, less the full bucket's burst, at 1000 B/s
    assert trio.current_time() - start == pytest.approx(2.0 - BURST_SECONDS)


async def test_takers_of_one_bucket_share_its_rate(autojump_clock: object) -> None:
    bucket = TokenBucket(1000)
    done: list[float] = []
    start = trio.current_time()

    async def reader() -> None:
        for _ in range(10):
            await bucket.take(100)
        done.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reader)
    # 2000 bytes at 1000 B/s together; taking turns, neither is done long before the
    # other (one after the other, the first would be done at 0.9 s)
    assert max(done) == pytest.approx(2.0 - BURST_SECONDS)
    assert min(done) >= max(done) - 0.25


async def test_paying_two_buckets_waits_for_the_slower_only(autojump_clock: object) -> None:
    fast, slow = TokenBucket(2000), TokenBucket(1000)
    start = trio.current_time()
    for _ in range(10):
        await take((fast, slow), 500)
    assert trio.current_time() - start == pytest.approx(5.0 - BURST_SECONDS)


async def test_a_new_rate_applies_to_a_wait_under_way(autojump_clock: object) -> None:
    bucket = TokenBucket(1000)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take, 10_000)  # 9.9 s at 1000 B/s
        await trio.sleep(1.0)
        bucket.rate = 10_000  # 10000 - 100 - 1000 bytes left: 0.89 s more
    assert trio.current_time() - start == pytest.approx(1.89)


def config(tmp_path: Path, text: str) -> Config:
    return parse_config(textwrap.dedent(text), path=tmp_path / "shardsync.toml")


async def test_buckets_follow_the_longest_origin_prefix(tmp_path: Path,
                                                        autojump_clock: object) -> None:
    rates = RateLimits()
    rates.apply(config(tmp_path, """
        max_rate = "1MiB"
        [[origin]]
        prefix = "https://a.example/"
        max_rate = "256KiB"
        [[origin]]
        prefix = "https://a.example/open/"
    """))
    assert [b.rate for b in rates.buckets_for("https://a.example/m/x.bin")] == [1 << 20, 256 << 10]
    assert [b.rate for b in rates.buckets_for("https://a.example/open/x.bin")] == [1 << 20]
    assert [b.rate for b in rates.buckets_for("https://b.example/x.bin")] == [1 << 20]
    (glob, origin) = rates.buckets_for("https://a.example/m/x.bin")
    rates.apply(config(tmp_path, """
        [[origin]]
        prefix = "https://a.example/"
        max_rate = "512KiB"
    """))
    assert rates.buckets_for("https://a.example/m/x.bin") == (origin,)  # kept, re-rated
    assert origin.rate == 512 << 10


async def test_a_removed_limit_frees_its_waiters(tmp_path: Path, autojump_clock: object) -> None:
    rates = RateLimits()
    rates.apply(config(tmp_path, 'max_rate = "1KiB"\n'))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, rates.buckets_for("https://a.example/x"), 100_000)
        await trio.sleep(1.0)
        rates.apply(config(tmp_path, 'max_rate = "0"\n'))
    assert trio.current_time() - start == pytest.approx(1.0)
    assert rates.buckets_for("https://a.example/x") == ()


# -- real downloads -------------------------------------------------------------------------


async def timed_downloads(origin: Origin, tmp_path: Path, cfg: Config,
                          files: dict[str, bytes], policy: FetchPolicy = FAST
                          ) -> dict[str, float]:
    """Download ``files`` (path -> bytes) from the origin at once, under ``cfg``'s limits;
    each one's seconds, and ``"*"``: all of them together."""
    for path, data in files.items():
        origin.set_file(path, data)
    rates = RateLimits()
    rates.apply(cfg)
    times: dict[str, float] = {}
    with store_at(tmp_path / "state", tmp_path / "site") as store:
        async with make_client(policy) as client:
            f = Fetcher(client, policy, rates=rates)
            start = trio.current_time()

            async def one(path: str) -> None:
                got = await f.file(origin.url_for(path), store, max_size=len(files[path]))
                times[path] = trio.current_time() - start
                assert got.digest == sha256(files[path])

            async with trio.open_nursery() as nursery:
                for path in files:
                    nursery.start_soon(one, path)
            times["*"] = trio.current_time() - start
    return times


def within(rate: float, limit: int) -> bool:
    return limit * 0.5 <= rate <= limit * 1.10


async def test_max_rate_holds_a_download_within_10_percent(origin: Origin,
                                                           tmp_path: Path) -> None:
    limit = 256 << 10
    data = bytes(range(256)) * (3 * limit // 256)  # 3 s at the limit
    cfg = config(tmp_path, f"max_rate = {limit}\n")
    t = await timed_downloads(origin, tmp_path, cfg, {"m/a.bin": data})
    assert within(len(data) / t["*"], limit), (len(data) / t["*"], limit)


async def test_an_origins_max_rate_holds_its_downloads_only(origin: Origin,
                                                            tmp_path: Path) -> None:
    limit = 256 << 10
    data = bytes(range(256)) * (3 * limit // 256)
    cfg = config(tmp_path, f"""
        [[origin]]
        prefix = "{origin.url_for('slow/')}"
        max_rate = "256KiB"
    """)
    t = await timed_downloads(origin, tmp_path, cfg, {"slow/a.bin": data, "fast/a.bin": data})
    assert within(len(data) / t["slow/a.bin"], limit), (len(data) / t["slow/a.bin"], limit)
    assert t["fast/a.bin"] < t["slow/a.bin"] / 2  # not under the prefix: not held


async def test_concurrent_downloads_share_the_global_bucket(origin: Origin,
                                                            tmp_path: Path) -> None:
    limit = 512 << 10
    data = bytes(range(256)) * (3 * limit // 2 // 256)  # two of them: 3 s at the limit
    cfg = config(tmp_path, f"max_rate = {limit}\n")
    t = await timed_downloads(origin, tmp_path, cfg, {"m/a.bin": data, "m/b.bin": b"b" + data[1:]})
    total = 2 * len(data)
    assert within(total / t["*"], limit), (total / t["*"], limit)
    # Neither had the whole rate. Not "each about half": a read is up to 512 KiB (a
    # second of this limit) against 768 KiB files, so one of them may get well over half
    # for a while (0.78 of the limit was seen under load).
    for path in ("m/a.bin", "m/b.bin"):
        assert len(data) / t[path] <= limit * 0.9, (path, len(data) / t[path])


async def test_waiting_for_tokens_is_not_a_slow_transfer(origin: Origin,
                                                         tmp_path: Path) -> None:
    """A max_rate below min_rate must not fail the download as slow: the time spent
    waiting for tokens is ours, not the origin's. (Here min_rate is 1 MiB/s over half a
    second, max_rate half of it: counting the waits, every window would fall short.)"""
    limit = 512 << 10
    data = bytes(range(256)) * (3 * limit // 256)
    cfg = config(tmp_path, f"max_rate = {limit}\n")
    policy = dataclasses.replace(FAST, min_rate=1 << 20, rate_window=0.5)
    t = await timed_downloads(origin, tmp_path, cfg, {"m/a.bin": data}, policy)
    assert within(len(data) / t["*"], limit), len(data) / t["*"]
