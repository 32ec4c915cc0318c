"""Durable per-file progress: a sync interrupted after some files finished never
fetches them again (issue 9).

Each finished download leaves a record (state_dir/downloads/) naming its URL,
validators, digest and size; the next sync asks for those files conditionally and
gets 304s. Checked on the wire, against the real test origin, with real processes
killed by SIGKILL and stopped by SIGTERM, for `shardsync sync` and `shardsync run`;
and in-process for a sync that failed on one bad shard, for gc (which keeps a
record's objects, and drops records whose model left the config), and for damaged
or planted records (ignored, never followed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from storehelpers import object_path, sha256
from synchelpers import (
    FAST,
    assert_published,
    big_model,
    cli_command,
    open_syncer,
    publish_on,
    run_cli,
    tfjs_model,
    write_config,
)

from shardsync.daemon.config import ModelConfig

#: Seven shards: five that finish at once and two dripped slowly, so that a kill lands
#: with five files finished and two in flight.
TOTAL = 26 * 1024 * 1024
SLOW = ("m/group1-shard5of7.bin", "m/group1-shard6of7.bin")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def records(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((state / "downloads").glob("*.json"))]


def wait_for_records(state: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len(list((state / "downloads").glob("*.json"))) < n:
        assert proc.poll() is None, "the sync ended before it was interrupted"
        assert time.monotonic() < deadline, "no files finished"
        time.sleep(0.01)


@pytest.mark.parametrize("command,signum", [
    ("sync", signal.SIGKILL), ("sync", signal.SIGTERM),
    ("run", signal.SIGKILL), ("run", signal.SIGTERM),
], ids=["sync-SIGKILL", "sync-SIGTERM", "run-SIGKILL", "run-SIGTERM"])
def test_an_interrupted_sync_fetches_no_finished_file_again(
    origin: Origin, tmp_path: Path, command: str, signum: int, stack: ExitStack
) -> None:
    assert origin.root is not None
    model = big_model(origin.root, TOTAL, seed=3, name="m")
    assert all(s.removeprefix("m/") in model.shards for s in SLOW)
    conf = tmp_path / "conf"
    sockets = stack.enter_context(short_dir())
    config = write_config(conf, {"big": origin.url_for("m/model.json")},
                          socket=str(sockets / "ctl.sock"))
    state = conf / "state"
    for path in SLOW:
        origin.fault_drip(path, chunk=16 * 1024, interval=0.05)
    log = tmp_path / "run.log"
    proc = subprocess.Popen(cli_command(command, "-c", config), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_for_records(state, 5, proc)
        proc.send_signal(signum)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    finished = {r["url"] for r in records(state)}
    assert len(finished) == 5, log.read_text()
    assert not (conf / "site" / "big").exists()  # interrupted before it published

    origin.clear_faults()
    before = len(origin.requests())
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    second = origin.requests()[before:]
    again = [e for e in second if origin.url_for(e.path) in finished]
    # Each finished file was asked for once, conditionally, and answered 304: no body.
    assert len(again) == 5
    assert all(e.status == 304 and e.body_bytes == 0 and "if-none-match" in e.headers
               for e in again), [(e.path, e.status, e.body_bytes) for e in again]
    assert json.loads(run.stdout)["models"][0]["files_reused"] == 5
    # Both runs together sent each shard once (bytes in flight at the kill aside).
    shard_bytes = origin.bytes_sent("m/*.bin")
    assert shard_bytes <= 1.05 * (model.size - len(model.manifest))
    assert_published(conf / "site", "big", model)
    assert records(state) == []  # the published version holds them now
    assert run_cli("verify", "-c", config).returncode == 0


def three_shards(fill: int) -> object:
    return tfjs_model("graph-model", [{
        "group1-shard1of3.bin": bytes([fill]) * 40_000,
        "group1-shard2of3.bin": bytes([fill + 1]) * 40_000,
        "group1-shard3of3.bin": bytes([fill + 2]) * 20_000,
    }])


def test_a_sync_failed_on_one_shard_refetches_only_that_one(origin: Origin,
                                                            tmp_path: Path) -> None:
    model = three_shards(1)
    url = publish_on(origin, "m", model)
    cfg = ModelConfig(name="m", url=url, interval=1800.0)
    origin.fault_status("m/group1-shard3of3.bin", 404, retry_after=None, times=None)

    async def main() -> None:
        async with open_syncer(tmp_path, policy=FAST) as env:
            first = await env.syncer.sync(cfg)
            assert not first.ok and "group1-shard3of3.bin" in str(first.error)
            assert sorted(d.url.rsplit("/", 1)[1] for d in env.store.downloaded()) == [
                "group1-shard1of3.bin", "group1-shard2of3.bin"]
            # gc keeps what the records name, even with no age grace.
            report = env.store.gc(sources=[url])
            assert report.objects_removed == 0
        origin.clear_faults()
        origin.reset_counters()
        async with open_syncer(tmp_path, policy=FAST) as env:  # a new process, as it were
            second = await env.syncer.sync(cfg)
            assert second.ok and second.changed, second.error
            assert (second.files_fetched, second.files_reused) == (1, 2)
            assert env.store.downloaded() == []

    trio.run(main)
    assert origin.bytes_sent("m/*.bin") == 20_000
    assert_published(tmp_path / "site", "m", model)


def test_records_of_a_model_that_left_the_config_are_dropped(origin: Origin,
                                                             tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    model = three_shards(5)
    url = publish_on(origin, "gone", model)
    origin.fault_status("gone/group1-shard3of3.bin", 404, retry_after=None, times=None)
    config = write_config(conf, {"gone": url})
    assert run_cli("sync", "-c", config).returncode == 1
    kept = records(conf / "state")
    assert len(kept) == 2
    objects = [object_path(conf / "state", r["digest"]) for r in kept]
    assert all(p.exists() for p in objects)
    # While the model is configured, gc keeps what its records name.
    assert "0 object(s)" in run_cli("gc", "-c", config).stdout
    assert all(p.exists() for p in objects)
    # Once it left the config, gc drops its records and frees their objects.
    write_config(conf, {})
    run = run_cli("gc", "-c", config)
    assert run.returncode == 0, run.stderr
    assert records(conf / "state") == []
    assert not any(p.exists() for p in objects)


def test_a_damaged_or_planted_record_is_ignored_and_the_file_fetched(
    origin: Origin, tmp_path: Path
) -> None:
    model = three_shards(9)
    url = publish_on(origin, "m", model)
    cfg = ModelConfig(name="m", url=url, interval=1800.0)
    origin.fault_status("m/group1-shard3of3.bin", 404, retry_after=None, times=None)
    bait = tmp_path / "bait.json"
    bait_text = json.dumps({"url": "x", "digest": sha256(b"x"), "size": 1})
    bait.write_text(bait_text)

    async def main() -> None:
        async with open_syncer(tmp_path, policy=FAST) as env:
            assert not (await env.syncer.sync(cfg)).ok
        paths = sorted((tmp_path / "state" / "downloads").glob("*.json"))
        assert len(paths) == 2
        paths[0].write_bytes(paths[0].read_bytes()[:7])  # a torn write
        paths[1].unlink()
        paths[1].symlink_to(bait)  # a planted symlink
        origin.clear_faults()
        origin.reset_counters()
        async with open_syncer(tmp_path, policy=FAST) as env:
            result = await env.syncer.sync(cfg)
            assert result.ok, result.error
            assert result.files_fetched == 3
            env.store.prune_downloads([url])
        assert os.listdir(tmp_path / "state" / "downloads") == []

    trio.run(main)
    assert bait.read_text() == bait_text
    assert origin.bytes_sent("m/*.bin") == 100_000
    assert_published(tmp_path / "site", "m", model)


def test_service_restarted_after_sigkill_reuses_finished_files(
    origin: Origin, tmp_path: Path, stack: ExitStack
) -> None:
    """`run` killed, then `run` again (not a one-shot sync): the service's own syncer
    reads the records too."""
    assert origin.root is not None
    model = big_model(origin.root, TOTAL, seed=4, name="m")
    conf = tmp_path / "conf"
    sockets = stack.enter_context(short_dir())
    config = write_config(conf, {"big": origin.url_for("m/model.json")},
                          socket=str(sockets / "ctl.sock"))
    for path in SLOW:
        origin.fault_drip(path, chunk=16 * 1024, interval=0.05)
    notify = NotifySocket(sockets / "notify")
    stack.callback(notify.close)
    with ServiceProcess(config, tmp_path / "a.log", notify=notify) as svc:
        svc.start()
        assert svc.proc is not None
        wait_for_records(conf / "state", 5, svc.proc)
        svc.signal(signal.SIGKILL)
        svc.wait()
    origin.clear_faults()
    before = len(origin.requests())
    with ServiceProcess(config, tmp_path / "b.log", notify=notify) as svc:
        svc.start()
        svc.wait_event("published", model="big")
        assert svc.stop() == 0
    second = [e for e in origin.requests()[before:] if e.path.endswith(".bin")]
    reused = [e for e in second if e.status == 304]
    assert len(reused) == 5 and sum(e.body_bytes for e in reused) == 0
    assert sorted(e.path for e in second if e.status != 304) == sorted(SLOW)
    assert_published(conf / "site", "big", model)
