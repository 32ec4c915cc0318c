"""download_windows and max_rate in the real service (``shardsync run`` in a subprocess).

Wall-clock windows cannot be waited for in a test, so each config places its window
around now: one that opened a minute ago (open), or one that opens in an hour (closed).
What went over the wire is read from the origin's request log.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, edit_config, short_dir
from storehelpers import ModelFiles
from synchelpers import assert_published, publish_on, run_cli, tfjs_model, write_config

from shardsync.daemon.api import rfc3339


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as d:
        yield d


def small(fill: int, size: int = 8192) -> ModelFiles:
    return tfjs_model("graph-model", [{"group1-shard1of2.bin": bytes([fill]) * size,
                                       "group1-shard2of2.bin": bytes([fill + 1]) * size}],
                      tag=fill)


def window(open_now: bool) -> tuple[str, int]:
    """A window around now, as config text, and the epoch second it starts at."""
    now = datetime.now().astimezone().replace(second=0, microsecond=0)
    start = now - timedelta(minutes=1) if open_now else now + timedelta(minutes=60)
    end = start + timedelta(minutes=61)
    return f"{start:%H:%M}-{end:%H:%M}", int(start.timestamp())


@pytest.fixture
def notify(sockets: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(sockets / "notify")
    yield ns
    ns.close()


def test_outside_a_window_a_new_model_waits_then_downloads_when_one_opens(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    model = small(1)
    url = publish_on(origin, "a", model)
    closed, opens = window(open_now=False)
    conf = tmp_path / "conf"
    keys = {"socket": str(sockets / "ctl.sock")}
    config = write_config(conf, {"a": url}, download_windows=[closed], **keys)
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
        svc.start()
        status = svc.wait_status(lambda s: s["models"][0]["state"] == "waiting", "waiting")
        m = status["models"][0]
        assert m["waiting"] == {"window": closed, "next": opens, "next_at": rfc3339(opens)}
        assert m["version"] is None
        # The manifest was read (the check); no shard was asked for at all.
        assert {e.path for e in origin.requests()} == {"a/model.json"}
        table = run_cli("status", "--socket", sockets / "ctl.sock")
        assert table.returncode == 0, table.stderr
        assert f"waiting for {closed}" in table.stdout, table.stdout

        since = svc.last_event_id()
        edit_config(config, {"a": url}, download_windows=[window(open_now=True)[0]], **keys)
        svc.wait_event("published", model="a", since=since)
        assert_published(conf / "site", "a", model)
        assert svc.model("a")["waiting"] is None


def test_outside_a_window_checks_still_run_and_a_changed_shard_waits(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    model = small(1)
    url = publish_on(origin, "a", model)
    conf = tmp_path / "conf"
    keys = {"socket": str(sockets / "ctl.sock"), "interval": "1s"}
    config = write_config(conf, {"a": url}, download_windows=[window(open_now=True)[0]],
                            **keys)
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
        svc.start()
        svc.wait_event("published", model="a")
        version = svc.model("a")["version"]
        since = svc.last_event_id()
        closed, opens = window(open_now=False)
        edit_config(config, {"a": url}, download_windows=[closed], **keys)
        svc.wait_event("config-reloaded", since=since)
        origin.set_file("a/group1-shard2of2.bin", b"\x09" * 8192)  # same size, new bytes
        origin.reset_counters()
        status = svc.wait_status(lambda s: s["models"][0]["state"] == "waiting", "waiting")
        assert status["models"][0]["waiting"]["window"] == closed
        assert status["models"][0]["version"] == version  # the old one stays published
        shard1 = origin.requests("a/group1-shard1of2.bin")
        shard2 = origin.requests("a/group1-shard2of2.bin")
        assert shard1 and shard2
        # every shard request was a conditional check: the unchanged shard's a 304, the
        # changed one's answered with its new body, which was not read (closed unread)
        assert all("if-none-match" in e.headers for e in shard1 + shard2)
        assert {e.status for e in shard1} == {304}
        assert {e.status for e in shard2} == {200}
        assert not list((conf / "state").glob("partial/*.data"))


def test_a_reload_lifts_max_rate_from_a_running_download(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    big = tfjs_model("graph-model", [{"group1-shard1of1.bin": bytes(range(256)) * 4096}],
                     tag="big")  # 1 MiB: 128 s at 8 KiB/s, more than any wait here
    url = publish_on(origin, "big", big)
    conf = tmp_path / "conf"
    keys = {"socket": str(sockets / "ctl.sock")}
    config = write_config(conf, {"big": url}, max_rate="8KiB", **keys)
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
        svc.start()
        svc.wait_status(lambda s: s["models"][0]["progress"]["bytes_done"] > 0
                        and s["models"][0]["state"] == "downloading", "downloading")
        edit_config(config, {"big": url}, max_rate="0", **keys)
        svc.wait_event("published", model="big")
        assert_published(conf / "site", "big", big)
        log = svc.log()
        assert "slower than" not in log  # waiting for tokens was not a slow transfer

