"""The sync of one model (shardsync.daemon.sync), against a real origin on 127.0.0.1.

Every claim is checked on the wire (what the origin saw and sent) and on disk (the
bytes a web server would serve from site_dir), never on the syncer's own word:

* every format (graph-model, layers-model, bare weights manifest), plain and quantized
  weights, real sample models and a multi-shard model in 4 MiB converter shards;
* dedupe: shards shared by URL move once, also when two models sync together; equal
  bytes under two URLs are one object;
* a warm re-sync with nothing changed moves no body byte; a shard changed under an
  unchanged manifest is found and published, and old versions are kept as configured;
* a dropped connection resumes with Range + If-Range;
* every fault the origin can play: either the sync recovers and publishes the right
  bytes, or the previous version stays published and the error names model, file
  and reason;
* a manifest with unsafe paths writes nothing anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
from pathlib import Path

import pytest
import trio
from origin import Origin
from storehelpers import (
    ModelFiles,
    assert_store_ok,
    object_files,
    sha256,
    tree_snapshot,
    write_model,
)
from synchelpers import (
    FAST,
    SyncEnv,
    assert_published,
    big_model,
    files_outside,
    open_syncer,
    publish_on,
    published_files,
    sample_models,
    sync,
    sync_together,
    tfjs_model,
)

from shardsync.daemon.demo.samples import CONVERTER_SHARD_SIZE
from shardsync.daemon.errors import ConnectError, FetchTimeoutError, ManifestError, UpstreamError
from shardsync.daemon.httpclient import FetchPolicy
from shardsync.daemon.resume import resume_start
from shardsync.daemon.sync import Progress
from shardsync.store import IntegrityError, ShardsyncError, UnsafePathError

#: Size of the multi-shard model: six 4 MiB converter shards and a short seventh,
#: enough for several shards in flight at once, small enough to keep the suite quick.
BIG_TOTAL = 24 * 1024 * 1024


def small_model(tag: object = 0, *, kind: str = "graph-model", seed: int = 0, **kw):
    """Two groups, three shards of a few KiB each: the shape of a real small model."""
    rng = random.Random(seed)
    return tfjs_model(kind, [
        {"group1-shard1of2.bin": rng.randbytes(8192), "group1-shard2of2.bin": rng.randbytes(4096)},
        {"group2-shard1of1.bin": rng.randbytes(2048)},
    ], tag=tag, **kw)


def versions_on_disk(env: SyncEnv, name: str) -> list[str]:
    vdir = env.site / name / "versions"
    return sorted(p.name for p in vdir.iterdir()) if vdir.exists() else []


# -- every format ------------------------------------------------------------------------

#: The sample models (shardsync.daemon.demo.samples.write_samples): what each one covers.
SAMPLES = {
    "tiny-face-detector": "bare weights manifest, uint8-quantized",
    "face-landmark-68-tiny": "bare weights manifest, uint8-quantized",
    "blazeface": "graph-model, float32 and int32",
    "antispoof": "graph-model, float16-quantized",
    "blazeface-sharded": "graph-model recut into 9 converter-named shards",
    "dense-layers": "layers-model as TF.js model.save() writes it",
    "string-table": "graph-model with a string weight (its group is walked)",
}


async def test_every_sample_format_is_published_byte_for_byte(
    origin: Origin, tmp_path: Path
) -> None:
    assert origin.root is not None
    models = sample_models(origin.root)
    assert set(models) == set(SAMPLES)
    async with open_syncer(tmp_path) as env:
        for name, model in models.items():
            url = origin.url_for(f"{name}/{model.manifest_name}")
            result = await sync(env, name, url)
            assert result.ok, (name, result.error)
            assert result.changed and result.files_fetched == len(model.shards)
            assert assert_published(env.site, name, model) == result.version
        assert_store_ok(env.state, env.site)
    # Every file crossed the wire exactly once, raw (no content coding).
    assert origin.bytes_sent() == sum(m.size for m in models.values())
    assert {e.headers.get("accept-encoding") for e in origin.requests()} == {"identity"}


@pytest.mark.parametrize("kind", ["graph-model", "layers-model", "weights-manifest"])
@pytest.mark.parametrize("quantization", [None, "float16", "uint8"])
async def test_generated_formats_and_quantizations(
    origin: Origin, tmp_path: Path, kind: str, quantization: str | None
) -> None:
    model = small_model(kind=kind, quantization=quantization)
    url = publish_on(origin, "m", model)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", model)


async def test_a_multi_shard_model_in_4mib_shards(origin: Origin, tmp_path: Path) -> None:
    assert origin.root is not None
    model = big_model(origin.root, BIG_TOTAL, seed=1)
    sizes = [len(b) for b in model.shards.values()]
    assert sizes[:-1] == [CONVERTER_SHARD_SIZE] * (len(sizes) - 1) and len(sizes) >= 6
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "big", origin.url_for("big/model.json"))
        assert result.ok, result.error
        assert result.files_fetched == len(sizes)
        assert_published(env.site, "big", model)
        assert_store_ok(env.state, env.site)
    assert origin.bytes_sent() == model.size


async def test_shards_in_a_subdirectory(origin: Origin, tmp_path: Path) -> None:
    model = tfjs_model("graph-model", [{"weights/group1-shard1of1.bin": b"\x07" * 1024}])
    url = publish_on(origin, "m", model)
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "m1", url)).ok
        version = assert_published(env.site, "m1", model)
        assert (env.site / "m1" / "versions" / version / "weights").is_dir()


async def test_shard_urls_carry_the_manifest_query(origin: Origin, tmp_path: Path) -> None:
    model = small_model()
    url = publish_on(origin, "hub/m", model) + "?tfjs-format=file"
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "hub", url)
        assert result.ok, result.error
        assert_published(env.site, "hub", model)  # names keep no query
    targets = {e.target for e in origin.requests()}
    assert targets == {f"/hub/m/{p}?tfjs-format=file" for p in [*model.shards, "model.json"]}


async def test_redirects_are_followed_but_the_canonical_url_is_the_identity(
    origin: Origin, tmp_path: Path
) -> None:
    model = small_model()
    url = publish_on(origin, "m", model)
    shard = "group1-shard1of2.bin"
    write_model(origin.root / "cdn", model)  # type: ignore[operator]
    origin.redirect(f"m/{shard}", origin.url_for(f"cdn/{shard}?sig=first"))
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "m1", url)).ok
        record = json.loads(next((env.state / "snapshots" / "m1").iterdir()).read_bytes())
        metas = {f["path"]: f["meta"] for f in record["files"]}
        assert metas[shard]["url"] == origin.url_for(f"m/{shard}")
    # The signed target changes; the file is still known by its canonical URL: a 304.
    origin.redirect(f"m/{shard}", origin.url_for(f"cdn/{shard}?sig=second"))
    origin.reset_counters()
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok and not result.changed
    assert origin.bytes_sent() == 0
    assert [e.status for e in origin.requests(f"cdn/{shard}")] == [304]


# -- dedupe --------------------------------------------------------------------------------


def two_models_sharing_shards(origin: Origin) -> tuple[str, str, dict[str, bytes]]:
    """Manifests a.json and b.json in one directory, naming the same shards."""
    a = small_model(tag="a", seed=3)
    b = tfjs_model("layers-model", [dict(list(a.shards.items())[:2]),
                                    {"group2-shard1of1.bin": a.shards["group2-shard1of1.bin"]}],
                   tag="b", manifest_name="b.json")
    a = ModelFiles("a.json", a.manifest, a.shards)
    return publish_on(origin, "shared", a), publish_on(origin, "shared", b), a.shards


async def test_a_second_model_sharing_shards_moves_no_shard_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    url_a, url_b, shards = two_models_sharing_shards(origin)
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "a", url_a)).ok
    origin.reset_counters()
    async with open_syncer(tmp_path) as env:  # a new run: what is held comes from the store
        result = await sync(env, "b", url_b)
        assert result.ok, result.error
        assert result.files_fetched == 0 and result.files_reused == 3
        _, files, _ = published_files(env.site, "b")
        assert files == shards
    assert origin.bytes_sent("shared/*.bin") == 0
    assert origin.bytes_sent("shared/b.json") > 0


async def test_models_sharing_shards_synced_together_fetch_each_once(
    origin: Origin, tmp_path: Path
) -> None:
    url_a, url_b, shards = two_models_sharing_shards(origin)
    async with open_syncer(tmp_path) as env:
        results = await sync_together(env, {"a": url_a, "b": url_b})
        assert results["a"].ok and results["b"].ok
        assert published_files(env.site, "a")[1] == published_files(env.site, "b")[1] == shards
    assert origin.bytes_sent("shared/*.bin") == sum(len(b) for b in shards.values())


async def test_a_shard_fetched_by_a_model_still_syncing_is_not_fetched_again(
    origin: Origin, tmp_path: Path
) -> None:
    # Model a holds the shared shards and one more that never finishes; model b starts
    # only once a has both shared shards, while a is still running.
    shared = {"s1.bin": b"\x11" * 65536, "s2.bin": b"\x22" * 65536}
    a = tfjs_model("graph-model", [shared, {"slow.bin": b"\x33" * 65536}],
                   manifest_name="a.json")
    b = tfjs_model("graph-model", [shared], manifest_name="b.json", tag="b")
    url_a, url_b = publish_on(origin, "shared", a), publish_on(origin, "shared", b)
    origin.fault_drip("shared/slow.bin", chunk=1, interval=1.0)
    policy = FetchPolicy(attempts=1, min_rate=0, read_timeout=30)
    async with open_syncer(tmp_path, policy=policy) as env:
        progress_a = Progress()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync, env, "a", url_a, progress_a)
            with trio.fail_after(30):
                while progress_a.files_done < 2:
                    await trio.sleep(0.01)
            result = await sync(env, "b", url_b)
            nursery.cancel_scope.cancel()
        assert result.ok, result.error
        assert published_files(env.site, "b")[1] == shared
    assert origin.bytes_sent("shared/s[12].bin") == sum(len(x) for x in shared.values())


# -- fair shares of the download limit ------------------------------------------------------


class StateLog(Progress):
    """A model's Progress that notes every state the syncer gives it, as (model, state),
    in one list shared by the models of a test: the order things happened in."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.__dict__.update(_name=name, _log=log)
        super().__init__()

    def __setattr__(self, key: str, value: object) -> None:
        super().__setattr__(key, value)
        if key == "state":
            self._log.append((self._name, str(value)))

    def states(self) -> list[str]:
        """This model's states in order, repeats folded."""
        out: list[str] = []
        for name, state in self._log:
            if name == self._name and (not out or out[-1] != state):
                out.append(state)
        return out


async def test_a_small_model_is_published_while_a_big_one_queued_ahead_of_it_still_runs(
    origin: Origin, tmp_path: Path
) -> None:
    # One download slot. The big model's 24 shards are dripped (about 40 ms each) so that
    # the small model starts while they wait in line; a first-come-first-served limiter
    # would serve all of them before the small model's manifest.
    rng = random.Random(3)
    big = tfjs_model("graph-model", [{f"group1-shard{k}of24.bin": rng.randbytes(16384)
                                      for k in range(1, 25)}], tag="big")
    small = small_model("small")
    url_big, url_small = publish_on(origin, "big", big), publish_on(origin, "small", small)
    origin.fault_drip("big/*.bin", chunk=4096, interval=0.01)
    log: list[tuple[str, str]] = []
    p_big, p_small = StateLog("big", log), StateLog("small", log)
    async with open_syncer(tmp_path, concurrency=1) as env:
        limiter = env.syncer.limiter
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync, env, "big", url_big, p_big)
            with trio.fail_after(30):
                while limiter.waiting("big") < 20:  # big's shards are in line
                    await trio.sleep(0.005)
                nursery.start_soon(sync, env, "small", url_small, p_small)
                while limiter.waiting("small") == 0:
                    await trio.sleep(0.001)
            assert p_small.state == "queued"  # waiting, not "downloading at 0 B/s"
            with trio.fail_after(30):
                while p_small.state != "idle":
                    await trio.sleep(0.005)
            # The small model is published; the big one is still downloading.
            assert published_files(env.site, "small")[1] == small.shards
            assert p_big.state in ("queued", "downloading")
            assert p_big.files_done < len(big.shards)
            assert not (env.site / "big").exists()
        assert p_big.state == "idle"
        assert_published(env.site, "big", big)
        assert_published(env.site, "small", small)
    assert p_small.states() == ["idle", "queued", "checking", "queued", "downloading",
                                "publishing", "idle"]
    assert log.index(("small", "idle")) < log.index(("big", "publishing"))
    # On the wire: the small model's files were served between the big one's shards.
    served = [e.path for e in origin.requests() if e.path.endswith(".bin")]
    last_small = max(i for i, p in enumerate(served) if p.startswith("small/"))
    assert sum(p.startswith("big/") for p in served[last_small:]) > 10


async def test_a_shared_shard_failing_names_each_model_in_its_own_error(
    origin: Origin, tmp_path: Path
) -> None:
    url_a, url_b, _ = two_models_sharing_shards(origin)
    # The shard fails slowly (a drip below min_rate over a 2 s window, not retried), so
    # the second model surely asks while the first model's request is still in flight:
    # with a fast 404 it could come after, and rightly ask again.
    origin.fault_drip("shared/group1-shard1of2.bin", chunk=1, interval=0.2)
    policy = dataclasses.replace(FAST, min_rate=1024.0, rate_window=2.0)
    async with open_syncer(tmp_path, policy=policy) as env:
        results = await sync_together(env, {"a": url_a, "b": url_b})
    assert len(origin.requests("shared/group1-shard1of2.bin")) == 1  # asked once for both
    for name in "ab":
        err = results[name].error
        assert err is not None and err.model == name, (name, str(err))
        assert str(err).startswith(f"model {name}: file ") and "slower than" in str(err)
    assert results["a"].error is not results["b"].error


async def test_equal_bytes_under_two_urls_are_one_object(origin: Origin, tmp_path: Path) -> None:
    one = small_model(tag="one", seed=5)
    two = small_model(tag="two", seed=5)  # same shards, another manifest, another directory
    url1, url2 = publish_on(origin, "one", one), publish_on(origin, "two", two)
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "one", url1)).ok
        assert (await sync(env, "two", url2)).ok
        assert published_files(env.site, "two")[1] == two.shards
        digests = {p.name for p in object_files(env.state)}
    assert digests == {sha256(x) for x in [one.manifest, two.manifest, *one.shards.values()]}
    assert len(object_files(env.state)) == 2 + len(one.shards)


# -- warm re-sync and changes ----------------------------------------------------------------


async def test_warm_resync_with_nothing_changed_moves_no_body_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    assert origin.root is not None
    model = big_model(origin.root, BIG_TOTAL, seed=2, name="m")
    url = origin.url_for("m/model.json")
    async with open_syncer(tmp_path) as env:
        first = await sync(env, "m1", url)
        assert first.ok
    origin.reset_counters()
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok and not result.changed
        assert result.version == first.version and result.received == 0
        assert result.files_reused == len(model.shards)
        assert versions_on_disk(env, "m1") == [first.version]
        assert len(list((env.state / "snapshots" / "m1").iterdir())) == 1
    requests = origin.requests()
    assert len(requests) == 1 + len(model.shards)
    assert {e.status for e in requests} == {304}
    assert all("if-none-match" in e.headers for e in requests)
    assert origin.bytes_sent() == 0


async def test_a_shard_changed_under_an_unchanged_manifest_is_published(
    origin: Origin, tmp_path: Path
) -> None:
    model = small_model()
    url = publish_on(origin, "m", model)
    shard = "group1-shard2of2.bin"
    seen = []
    async with open_syncer(tmp_path, keep_versions=2) as env:
        seen.append((await sync(env, "m1", url)).version)
        for i in (1, 2):
            new = bytes([i]) * len(model.shards[shard])
            origin.set_file(f"m/{shard}", new)
            model = ModelFiles(model.manifest_name, model.manifest, {**model.shards, shard: new})
            origin.reset_counters()
            result = await sync(env, "m1", url)
            assert result.ok and result.changed, result.error
            assert result.files_fetched == 1
            seen.append(assert_published(env.site, "m1", model))
            statuses = {e.path: e.status for e in origin.requests()}
            assert statuses == {"m/model.json": 304, f"m/{shard}": 200,
                                "m/group1-shard1of2.bin": 304, "m/group2-shard1of1.bin": 304}
            assert origin.bytes_sent() == len(new)
            # The previous version stays (keep_versions = 2); older ones go.
            assert versions_on_disk(env, "m1") == sorted(seen[-2:])
        assert_store_ok(env.state, env.site)
    assert len(set(seen)) == 3


async def test_a_file_restamped_without_change_is_no_new_version(
    origin: Origin, tmp_path: Path
) -> None:
    # An origin without ETags whose files get a new date (a redeploy) but the same bytes.
    origin.send_etag = False
    model = small_model()
    url = publish_on(origin, "m", model)
    shard = "group2-shard1of1.bin"
    async with open_syncer(tmp_path) as env:
        first = await sync(env, "m1", url)
        later = (origin.root / "m" / shard).stat().st_mtime + 10  # type: ignore[operator]
        origin.set_file(f"m/{shard}", model.shards[shard], mtime=later)  # same bytes
        restamped = await sync(env, "m1", url)
        assert restamped.ok and not restamped.changed and restamped.version == first.version
        assert restamped.files_fetched == 1
        origin.reset_counters()
        # The new date was recorded: the next check is a 304 again.
        again = await sync(env, "m1", url)
        assert again.ok and not again.changed and again.received == 0
        assert versions_on_disk(env, "m1") == [first.version]
    assert {e.status for e in origin.requests()} == {304}


# -- resume ------------------------------------------------------------------------------------


async def test_resume_after_a_dropped_connection_mid_shard(origin: Origin, tmp_path: Path) -> None:
    assert origin.root is not None
    model = big_model(origin.root, BIG_TOTAL, seed=3, name="m")
    url = origin.url_for("m/model.json")
    origin.fault_drop("m/group1-shard2of7.bin", after=1_500_000, times=1)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", model)
    first, retry = origin.requests("m/group1-shard2of7.bin")
    assert "range" not in first.headers and first.body_bytes == 1_500_000
    start = int(retry.headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 1_500_000
    assert retry.headers["if-range"].startswith('"')  # the ETag the first bytes came with
    assert retry.status == 206
    assert origin.bytes_sent() <= 1.05 * model.size


# -- faults: recovered -------------------------------------------------------------------------

SHARD_A = "group1-shard1of2.bin"


@pytest.fixture
async def v1(origin: Origin, tmp_path: Path):
    """Model m1 published at version 1; the origin then holds version 2 (new shard bytes)."""
    url = publish_on(origin, "m", small_model(tag="v1", seed=1))
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok
    v2 = small_model(tag="v2", seed=2)
    publish_on(origin, "m", v2)
    origin.reset_counters()
    return url, v2, result.version, tree_snapshot(tmp_path / "site")


async def test_dropped_connection_is_resumed(origin: Origin, tmp_path: Path, v1) -> None:
    url, v2, _, _ = v1
    origin.fault_drop(f"m/{SHARD_A}", after=3000, times=1)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok and result.changed, result.error
        assert_published(env.site, "m1", v2)
    assert [e.status for e in origin.requests(f"m/{SHARD_A}")] == [200, 206]
    overlap = 3000 - resume_start(3000)  # re-asked and compared, not appended
    assert origin.bytes_sent(f"m/{SHARD_A}") == len(v2.shards[SHARD_A]) + overlap


async def test_a_server_ignoring_range_is_read_from_zero(
    origin: Origin, tmp_path: Path, v1
) -> None:
    url, v2, _, _ = v1
    origin.fault_drop(f"m/{SHARD_A}", after=3000, times=1)
    origin.fault_ignore_range(f"m/{SHARD_A}")
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", v2)
    first, retry = origin.requests(f"m/{SHARD_A}")
    assert "range" in retry.headers and retry.status == 200
    assert retry.body_bytes == len(v2.shards[SHARD_A])


async def test_a_short_read_is_resumed(origin: Origin, tmp_path: Path, v1) -> None:
    url, v2, _, _ = v1
    origin.fault_truncate(f"m/{SHARD_A}", missing=100, times=1)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", v2)
    first, retry = origin.requests(f"m/{SHARD_A}")
    size = len(v2.shards[SHARD_A])
    start = resume_start(size - 100)  # a resume re-asks an overlap, compared before appending
    assert retry.headers["range"] == f"bytes={start}-" and retry.status == 206
    assert origin.bytes_sent(f"m/{SHARD_A}") == size + (size - 100 - start)


async def test_a_wrong_content_range_start_restarts_from_zero(
    origin: Origin, tmp_path: Path, v1
) -> None:
    url, v2, _, _ = v1
    origin.fault_drop(f"m/{SHARD_A}", after=3000, times=1)
    origin.fault_bad_content_range(f"m/{SHARD_A}", shift=1000, times=1)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", v2)
    log = origin.requests(f"m/{SHARD_A}")
    assert [e.status for e in log] == [200, 206, 200]
    assert "range" not in log[2].headers


async def test_a_file_changed_between_requests_is_read_whole_again(
    origin: Origin, tmp_path: Path, v1
) -> None:
    url, v2, _, _ = v1
    origin.fault_drop(f"m/{SHARD_A}", after=3000, times=1)
    async with open_syncer(tmp_path, policy=FetchPolicy(attempts=1)) as env:
        assert not (await sync(env, "m1", url)).ok  # leaves 3000 bytes of the old file
    new = b"\x5a" * len(v2.shards[SHARD_A])
    origin.set_file(f"m/{SHARD_A}", new)
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        _, files, _ = published_files(env.site, "m1")
        assert files[SHARD_A] == new
    retry = origin.requests(f"m/{SHARD_A}")[-1]
    assert "if-range" in retry.headers and retry.status == 200 and retry.body_bytes == len(new)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(origin: Origin, tmp_path: Path, v1, status: int) -> None:
    url, v2, _, _ = v1
    origin.fault_status(f"m/{SHARD_A}", status, retry_after=1, times=1)
    sent: list[tuple[str, float]] = []
    async with open_syncer(tmp_path) as env:
        async def stamp(request) -> None:
            sent.append((request.url.path, trio.current_time()))

        env.syncer.fetcher.client.event_hooks["request"].append(stamp)
        result = await sync(env, "m1", url)
        assert result.ok, result.error
        assert_published(env.site, "m1", v2)
    times = [t for p, t in sent if p.endswith(SHARD_A)]
    assert [e.status for e in origin.requests(f"m/{SHARD_A}")] == [status, 200]
    # FAST backs off for at most 20 ms: only Retry-After can make the gap a second.
    assert times[1] - times[0] >= 1.0


# -- faults: the previous version stays --------------------------------------------------------


def _html_fallback(origin: Origin) -> None:
    origin.remove_file(f"m/{SHARD_A}")
    origin.fault_html_fallback("m/*")


FAILURES = {
    # name: (set the fault up, policy, error class, words the message must hold)
    "drop-every-time": (lambda o: o.fault_drop(f"m/{SHARD_A}", after=1000),
                        FAST, ConnectError, ["connection"]),
    "truncated-every-time": (lambda o: o.fault_truncate(f"m/{SHARD_A}", missing=10),
                             FAST, ConnectError, ["connection"]),
    "html-for-a-missing-file": (_html_fallback, FAST, UpstreamError, ["HTML"]),
    "slow-drip": (lambda o: o.fault_drip(f"m/{SHARD_A}", chunk=512, interval=0.05),
                  FetchPolicy(attempts=2, backoff_base=0.005, min_rate=64 * 1024,
                              rate_window=0.3), FetchTimeoutError, ["slower than"]),
    "endless-body": (lambda o: o.fault_endless(f"m/{SHARD_A}"), FAST, IntegrityError,
                     ["longer than"]),
    "length-over-the-group": (lambda o: o.fault_endless(f"m/{SHARD_A}",
                                                        content_length=1 << 30),
                              FAST, IntegrityError, ["larger than its weight group"]),
    "503-every-time": (lambda o: o.fault_status(f"m/{SHARD_A}", 503, retry_after=None,
                                                times=None), FAST, UpstreamError, ["503"]),
    "404-shard": (lambda o: o.remove_file(f"m/{SHARD_A}"), FAST, UpstreamError, ["404"]),
    "manifest-not-json": (lambda o: o.set_file("m/model.json", b"<html>oops</html>"), FAST,
                          ManifestError, ["not valid JSON"]),
    "short-shard": (lambda o: o.set_file(f"m/{SHARD_A}", b"\0" * 8188), FAST, IntegrityError,
                    ["weight group 1"]),
}


async def test_several_failed_files_are_counted_in_one_error(
    origin: Origin, tmp_path: Path, v1
) -> None:
    url, _, version1, _ = v1
    origin.remove_file(f"m/{SHARD_A}")
    origin.remove_file("m/group2-shard1of1.bin")
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", url)
    assert result.version == version1
    assert "404" in str(result.error) and "(and 1 more file(s) failed)" in str(result.error)


@pytest.mark.parametrize("case", FAILURES)
async def test_on_failure_the_previous_version_stays_and_the_error_says_why(
    origin: Origin, tmp_path: Path, v1, case: str
) -> None:
    url, _, version1, site_before = v1
    setup, policy, error_class, words = FAILURES[case]
    setup(origin)
    async with open_syncer(tmp_path, policy=policy) as env:
        with trio.fail_after(30):
            result = await sync(env, "m1", url)
        assert result.version == version1 and not result.changed
        assert env.store.versions.current("m1") == version1
    assert tree_snapshot(tmp_path / "site") == site_before
    err = result.error
    assert isinstance(err, error_class), repr(err)
    assert err.model == "m1"
    file = "model.json" if case == "manifest-not-json" else SHARD_A
    message = str(err)
    assert "m1" in message and file in message, message
    for word in words:
        assert word in message, message
    if case == "404-shard":
        assert len(origin.requests(f"m/{SHARD_A}")) == 1  # a 404 is not retried
    if case == "503-every-time":
        assert len(origin.requests(f"m/{SHARD_A}")) == FAST.attempts


async def test_failed_transfers_leave_their_partial_for_the_next_try(
    origin: Origin, tmp_path: Path, v1
) -> None:
    url, v2, _, _ = v1
    origin.fault_drop(f"m/{SHARD_A}", after=5000)
    async with open_syncer(tmp_path, policy=FetchPolicy(attempts=1)) as env:
        assert not (await sync(env, "m1", url)).ok
        partials = env.store.ingests()
        assert [(p.url, p.durable) for p in partials] == [(origin.url_for(f"m/{SHARD_A}"), 5000)]
    origin.clear_faults()
    origin.reset_counters()
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "m1", url)).ok
        assert_published(env.site, "m1", v2)
        assert env.store.ingests() == []
    assert origin.bytes_sent(f"m/{SHARD_A}") == len(v2.shards[SHARD_A]) - resume_start(5000)


# -- unsafe manifests ------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [b"[" * 100_000, b'{"a": ' * 100_000])
async def test_a_hostile_manifest_fails_its_model_and_the_others_publish(
    origin: Origin, tmp_path: Path, manifest: bytes
) -> None:
    # Nested deeper than the parser's recursion limit: that model's error, not an
    # exception out of the pass that would cancel the healthy model beside it.
    good = small_model(tag="good")
    url_good = publish_on(origin, "good", good)
    origin.set_file("bad/model.json", manifest)
    async with open_syncer(tmp_path) as env:
        results = await sync_together(env, {"good": url_good,
                                             "bad": origin.url_for("bad/model.json")})
        assert results["good"].ok, results["good"].error
        assert_published(env.site, "good", good)
    err = results["bad"].error
    assert isinstance(err, ManifestError) and err.model == "bad", repr(err)
    assert "nested too deeply" in str(err)


@pytest.mark.parametrize("path", ["../evil.bin", "../../../evil.bin", "sub/../../evil.bin",
                                  "/tmp/evil.bin", "..\\evil.bin", "http://evil.example/x.bin",
                                  "a\ud800.bin", "sub/" + "x" * 252 + ".bin"])
async def test_unsafe_paths_are_refused_and_nothing_is_written_outside(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    bad = tfjs_model("graph-model", [{"ok.bin": b"\0" * 64, path: b"\1" * 64}])
    origin.set_file("m/model.json", bad.manifest)
    origin.set_file("m/ok.bin", b"\0" * 64)
    state, site = tmp_path / "state", tmp_path / "site"
    async with open_syncer(tmp_path) as env:
        before = files_outside(tmp_path, state, site)
        result = await sync(env, "m1", origin.url_for("m/model.json"))
        after = files_outside(tmp_path, state, site)
    assert after == before
    assert isinstance(result.error, UnsafePathError | ManifestError), repr(result.error)
    assert result.error.model == "m1" and repr(path)[1:-1] in str(result.error)
    assert [e.path for e in origin.requests()] == ["m/model.json"]  # no shard was asked for
    assert not (site / "m1").exists()
    assert list((state / "partial").iterdir()) == []


async def test_a_manifest_name_of_250_bytes_is_published(origin: Origin, tmp_path: Path) -> None:
    # Issue 14 (7): the entry point's temporary (.tmp-<name>-<pid>-<random>) was 26 bytes
    # longer than its name, so a legal name over 229 bytes failed with "File name too
    # long", naming nothing. Shards of 255-byte names are placed too.
    model = tfjs_model("graph-model", [{"s" * 251 + ".bin": b"\1" * 64}],
                       manifest_name="m" * 245 + ".json")
    async with open_syncer(tmp_path) as env:
        result = await sync(env, "m1", publish_on(origin, "m", model))
        assert result.ok, result.error
        assert_published(env.site, "m1", model)


async def test_an_io_error_reading_the_stored_manifest_fails_the_sync_naming_the_model(
    origin: Origin, tmp_path: Path
) -> None:
    # On a 304 of the manifest the store's copy is read: make that read(2) fail for
    # for real by bind-mounting /proc/self/mem over the object file: it is a regular
    # file, so the object counts as held, but it is the memory of the (exited) mount
    # process, so read(2) fails (ESRCH) -- a bare OSError before the fix.
    assert origin.root is not None
    model = big_model(origin.root, BIG_TOTAL, seed=3, name="m")
    url = origin.url_for("m/model.json")
    async with open_syncer(tmp_path) as env:
        assert (await sync(env, "m1", url)).ok
        obj = next(p for p in object_files(env.state) if p.name == sha256(model.manifest))
        subprocess.run(["mount", "--bind", "/proc/self/mem", str(obj)], check=True)
        try:
            result = await sync(env, "m1", url)
        finally:
            subprocess.run(["umount", "-l", str(obj)], check=True)
    assert isinstance(result.error, ShardsyncError)
    assert "m1" in str(result.error)
