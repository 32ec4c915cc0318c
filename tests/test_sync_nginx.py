"""Sync against a real nginx as the origin: real servers differ from test servers.

nginx serves the origin directory with its own validators (``ETag: "<mtime>-<size>"``,
Last-Modified), its own Range / If-Range rules and sendfile. Its access log (a
``log_format`` with ``$body_bytes_sent``) is the account of what crossed the wire:

* a cold sync publishes the origin's bytes, every file sent once;
* a warm re-sync is answered with 304s only and moves no body byte;
* a partial download on disk (interrupted, then cut shorter, as a lost tail after a
  crash leaves it) is resumed with Range + If-Range, and nginx sends only the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from storehelpers import ModelFiles
from synchelpers import (
    NginxOrigin,
    assert_published,
    big_model,
    open_syncer,
    sample_models,
    serve_directory,
)

from shardsync.daemon.config import ModelConfig
from shardsync.daemon.resume import resume_start

#: The multi-shard model: four 4 MiB shards and a short fifth, ~16 MiB in all.
TOTAL = 16 * 1024 * 1024


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxOrigin]:
    """nginx serving ``tmp_path/origin`` (empty), with its access log."""
    root = tmp_path / "origin"
    root.mkdir()
    with serve_directory(root, tmp_path / "nginx") as server:
        yield server


def models(nginx: NginxOrigin) -> dict[str, tuple[str, ModelFiles]]:
    """A multi-shard layers-model and two real sample models (a bare weights manifest and
    a graph-model) on nginx: name -> (manifest URL, files)."""
    out = {"big": (nginx.url_for("big/model.json"), big_model(nginx.root, TOTAL, seed=11))}
    samples = sample_models(nginx.root / "samples")
    for name in ("tiny-face-detector", "antispoof"):
        model = samples[name]
        out[name] = (nginx.url_for(f"samples/{name}/{model.manifest_name}"), model)
    return out


async def test_cold_sync_then_warm_resync_with_only_304s(
    nginx: NginxOrigin, tmp_path: Path
) -> None:
    served = models(nginx)
    async with open_syncer(tmp_path) as env:
        for name, (url, model) in served.items():
            result = await env.syncer.sync(ModelConfig(name, url, 1800.0))
            assert result.ok and result.changed, result.error
            assert assert_published(env.site, name, model) == result.version
    cold = nginx.hits()
    assert {h.status for h in cold} == {200}
    assert sum(h.body_bytes for h in cold) == sum(m.size for _, m in served.values())
    assert len(cold) == sum(1 + len(m.shards) for _, m in served.values())

    nginx.clear()
    partial = tmp_path / "state" / "partial"
    before = partial.stat().st_mtime_ns
    async with open_syncer(tmp_path, concurrency=2) as env:  # validators from the store
        for name, (url, _) in served.items():
            result = await env.syncer.sync(ModelConfig(name, url, 1800.0))
            assert result.ok and not result.changed and result.received == 0, result.error
    # A check answered 304 touches no partial download (no file made and removed) ...
    assert partial.stat().st_mtime_ns == before
    warm = nginx.hits()
    # ... and leaves its connection open for the next: never more than the limit.
    assert len({h.connection for h in warm}) <= 2, [h.connection for h in warm]
    assert len(warm) == len(cold)
    assert {h.status for h in warm} == {304}
    assert sum(h.body_bytes for h in warm) == 0
    assert all(h.if_none_match.startswith('"') for h in warm)  # nginx's own ETags


async def test_a_truncated_partial_on_disk_is_resumed(nginx: NginxOrigin, tmp_path: Path) -> None:
    big = big_model(nginx.root, TOTAL, seed=12)
    url = nginx.url_for("big/model.json")
    shard = "group1-shard2of5.bin"
    shard_url = nginx.url_for(f"big/{shard}")
    async with open_syncer(tmp_path) as env:
        # A download interrupted after at least 1 MiB ...
        with trio.CancelScope() as scope:
            got = 0

            def progress(n: int) -> None:
                nonlocal got
                got += n
                if got >= 1 << 20:
                    scope.cancel()

            await env.syncer.fetcher.file(shard_url, env.store, progress=progress)
        assert scope.cancelled_caught
        (partial,) = env.store.ingests()
        assert partial.url == shard_url and partial.etag  # nginx's ETag, for If-Range
        # ... whose tail is then lost, as a crash can leave it.
        data = env.state / "partial" / f"{partial.ref}.data"
        keep = 1_000_003
        assert data.stat().st_size > keep
        with open(data, "r+b") as f:
            f.truncate(keep)
        nginx.clear()

        result = await env.syncer.sync(ModelConfig("big", url, 1800.0))
        assert result.ok, result.error
        assert_published(env.site, "big", big)
        assert env.store.ingests() == []
    (hit,) = [h for h in nginx.hits() if h.uri.endswith(shard)]
    start = resume_start(keep)  # a resume re-asks an overlap, compared before appending
    assert (hit.status, hit.range, hit.if_range) == (206, f"bytes={start}-", partial.etag)
    assert hit.body_bytes == len(big.shards[shard]) - start
    assert sum(h.body_bytes for h in nginx.hits()) == big.size - start
