"""When a removed model leaves site_dir (shardsync.daemon.removals): a grace period after
it left the config, also when the service restarts in between.

The file's rules with a chosen clock; then the real service, stopped and started again
while a removed model's grace runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, edit_config, short_dir
from storehelpers import tfjs_model
from synchelpers import publish_on, write_config

from shardsync.daemon.removals import FILE_NAME, RemovalTimes
from shardsync.daemon.service import GRACE_ENV


def test_the_moment_a_model_left_is_kept_across_opens(tmp_path: Path) -> None:
    now = [1000.0]
    times = RemovalTimes.open(tmp_path, clock=lambda: now[0])
    assert times.left("b") == 1000.0
    now[0] = 1100.0
    assert times.left("b") == 1000.0  # recorded once, not moved by a second look
    again = RemovalTimes.open(tmp_path, clock=lambda: now[0])  # a restart
    assert again.left("b") == 1000.0
    assert again.remaining("b", 300) == 200.0
    now[0] = 2000.0
    assert again.remaining("b", 300) == 0.0  # overdue: at once
    now[0] = 500.0  # a clock set back: never more than a grace from now
    assert again.remaining("b", 300) == 300.0
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o640


def test_forget_and_keep_only_drop_records_durably(tmp_path: Path) -> None:
    times = RemovalTimes.open(tmp_path, clock=lambda: 7.0)
    for name in ("a", "b", "c"):
        times.left(name)
    times.forget("a")
    times.keep_only(["b", "x"])
    assert json.loads((tmp_path / FILE_NAME).read_text()) == {"b": 7.0}
    assert "b" in RemovalTimes.open(tmp_path) and "c" not in RemovalTimes.open(tmp_path)


def test_an_unreadable_file_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"b": "soon"')
    times = RemovalTimes.open(tmp_path, clock=lambda: 5.0)
    assert "b" not in times and times.left("b") == 5.0
    assert json.loads((tmp_path / FILE_NAME).read_text()) == {"b": 5.0}


def test_a_restart_does_not_start_a_removed_models_grace_again(
    origin: Origin, tmp_path: Path
) -> None:
    """b leaves the config and the service restarts: b goes a grace period after it
    left, not a grace period after the start (and not earlier either)."""
    grace = 6.0
    urls = {n: publish_on(origin, n, tfjs_model("graph-model", [{"g.bin": bytes([i]) * 4096}],
                                                 tag=n))
            for i, n in enumerate(("a", "b"))}
    with short_dir() as sockets:
        sock = str(sockets / "ctl.sock")
        conf = tmp_path / "conf"
        config = write_config(conf, urls, socket=sock)
        env = {GRACE_ENV: str(grace)}
        # One notify socket per run: a READY=1 the first run sent after its reload must
        # not pass for the second run's.
        with NotifySocket(sockets / "n1") as notify, NotifySocket(sockets / "n2") as notify2:
            with ServiceProcess(config, tmp_path / "service.log", notify=notify,
                                env=env) as svc:
                svc.start()
                for name in urls:
                    svc.wait_event("published", model=name)
                cursor = svc.last_event_id()
                edit_config(config, {"a": urls["a"]}, socket=sock)
                left = svc.wait_event("config-reloaded", since=cursor)
                assert left["removed"] == ["b"]
                assert svc.stop() == 0
            assert json.loads((conf / "state" / FILE_NAME).read_text()).keys() == {"b"}
            with ServiceProcess(config, tmp_path / "service.log", notify=notify2,
                                env=env) as svc:
                svc.start()
                started = svc.wait_event("service-started", since=left["id"])
                gone = svc.wait_event("model-unpublished", model="b", since=started["id"])
                # Times by the event log's clock, the wall clock the grace counts on too.
                # Not before the grace has run from when b left (within it if the restart
                # was quick, at once if not), and so less than a grace after the start.
                assert gone["time"] >= left["time"] + grace - 0.01, (left, started, gone)
                assert gone["time"] - started["time"] < grace, (left, started, gone)
                assert not (conf / "site" / "b").exists()
                assert (conf / "site" / "a").is_dir()
                assert json.loads((conf / "state" / FILE_NAME).read_text()) == {}


def test_a_model_back_in_the_config_while_stopped_is_kept(origin: Origin, tmp_path: Path
                                                          ) -> None:
    """b leaves the config, the service stops, b is put back: at the next start its
    record goes (a later removal counts from then) and b stays published."""
    urls = {n: publish_on(origin, n, tfjs_model("graph-model", [{"g.bin": bytes([i]) * 4096}],
                                                 tag=n))
            for i, n in enumerate(("a", "b"))}
    with short_dir() as sockets:
        sock = str(sockets / "ctl.sock")
        conf = tmp_path / "conf"
        config = write_config(conf, urls, socket=sock)
        # One notify socket per run: a READY=1 the first run sent after its reload must
        # not pass for the second run's.
        with NotifySocket(sockets / "n1") as notify, NotifySocket(sockets / "n2") as notify2:
            with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
                svc.start()
                for name in urls:
                    svc.wait_event("published", model=name)
                cursor = svc.last_event_id()
                edit_config(config, {"a": urls["a"]}, socket=sock)
                left = svc.wait_event("config-reloaded", since=cursor)
                assert left["removed"] == ["b"]
                assert svc.stop() == 0
            assert json.loads((conf / "state" / FILE_NAME).read_text()).keys() == {"b"}
            edit_config(config, urls, socket=sock)
            with ServiceProcess(config, tmp_path / "service.log", notify=notify2) as svc:
                svc.start()
                svc.wait_event("checked", model="b", since=left["id"])
                assert json.loads((conf / "state" / FILE_NAME).read_text()) == {}
                assert (conf / "site" / "b").is_dir()
