"""The service as it runs on a kiosk: the real ``shardsync run`` in a subprocess.

Each test starts ``python -m shardsync.daemon.cli run -c CONFIG`` against the test
origin, receives sd_notify datagrams on a real ``AF_UNIX`` socket, and talks to the
service only over its control socket (httpx, curl, ``shardsync status``) and with
signals. What got published is read from site_dir and state_dir's raw files; what went
over the wire, from the origin's request log. Waits are on the service's own reports
(an event, a status, a notify message) with generous deadlines, never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import trio
from origin import Origin
from servicehelpers import (
    WAIT,
    NotifySocket,
    ServiceProcess,
    edit_config,
    replace_text,
)
from storehelpers import ModelFiles, object_files
from synchelpers import (
    assert_published,
    big_model,
    cli_command,
    publish_on,
    run_cli,
    tfjs_model,
    write_config,
)
from test_metrics import parse as parse_metrics

from shardsync.daemon.config import ConfigError
from shardsync.daemon.httpserver import MAX_CONNECTIONS, MAX_REFUSING
from shardsync.daemon.notify import Notifier
from shardsync.daemon.resume import resume_start
from shardsync.daemon.service import GRACE_ENV, grace_from_env
from shardsync.daemon.statustable import format_status_table
from shardsync.daemon.tuning import READ_NUM_BYTES
from shardsync.store import GRACE_SECONDS, NotFoundError, ShardsyncError

#: SIGTERM to exit: the unit's contract (TimeoutStopSec leaves room above it).
STOP_WITHIN = 10.0


def small(tag: str, fill: int, size: int = 8192) -> ModelFiles:
    """A graph-model of two shards filled with ``fill`` and ``fill + 1``."""
    return tfjs_model("graph-model", [{"group1-shard1of2.bin": bytes([fill]) * size,
                                       "group1-shard2of2.bin": bytes([fill + 1]) * size}],
                      tag=tag)


def service(config: Path, tmp_path: Path, notify: NotifySocket | None = None, *,
            listen: socket.socket | None = None, nofile: int | None = None,
            **env: str) -> ServiceProcess:
    return ServiceProcess(config, tmp_path / "service.log", notify=notify, env=env,
                          listen=listen, nofile=nofile)


def ref(state: Path, name: str) -> str:
    return (state / "refs" / name).read_text().strip()


def by_name(status: dict, name: str) -> dict:
    (m,) = [m for m in status["models"] if m["name"] == name]
    return m


# -- start-up, status, versions ------------------------------------------------------------


def test_ready_then_downloading_then_idle_with_the_published_version(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    model = tfjs_model("graph-model", [{"group1-shard1of2.bin": bytes(range(256)) * 1024,
                                        "group1-shard2of2.bin": b"\x07" * 256 * 1024}], tag="a")
    url = publish_on(origin, "a", model)
    # About a second per shard: long enough to be seen downloading.
    origin.fault_drip("a/*.bin", chunk=16 * 1024, interval=0.05)
    conf = tmp_path / "conf"
    config = write_config(conf, {"a": url}, socket=str(sockets / "ctl.sock"))
    with service(config, tmp_path, notify, WATCHDOG_USEC="200000") as svc:
        svc.start()  # READY=1 arrived
        status = svc.status()  # answered at once: the socket listened before READY
        assert status["service"]["pid"] == svc.pid
        assert status["service"]["config"] == str(config)
        assert status["service"]["config_error"] is None
        assert [m["name"] for m in status["models"]] == ["a"]

        down = svc.wait_status(lambda s: s["models"][0]["state"] == "downloading",
                               "a downloading")
        progress = down["models"][0]["progress"]
        assert progress["files_total"] == 2
        assert progress["bytes_total"] == 512 * 1024
        assert down["models"][0]["version"] is None  # nothing published yet

        published = svc.wait_event("published", model="a")
        idle = by_name(svc.wait_status(lambda s: s["models"][0]["state"] == "idle",
                                       "a idle"), "a")
        version = assert_published(conf / "site", "a", model)
        assert idle["version"] == published["version"] == version == ref(conf / "state", "a")
        assert idle["last_error"] is None and idle["last_success"] >= idle["last_check"]
        assert idle["next_check"] > idle["last_check"] + 1000  # the 30 min default, ±10 %

        assert notify.wait_for("STATUS", "1 model(s): 1 idle")
        assert notify.wait_for("WATCHDOG", "1")  # every 0.1 s while making progress
        assert svc.stop(STOP_WITHIN) == 0
    assert notify.keys() == ["READY", "STOPPING"]
    assert svc.log().count("Traceback") == 0



def test_with_one_slot_a_model_added_behind_a_big_one_shows_queued_and_is_published_first(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    # One download slot. The big model's ten shards are dripped (~0.4 s each); the small
    # one is added by a reload once the big one is downloading, so it starts behind the
    # big one's queued shards. The service's scheduler shares the syncer's fair limiter.
    big = tfjs_model("graph-model", [{f"group1-shard{k}of10.bin": bytes([k]) * 128 * 1024
                                      for k in range(1, 11)}], tag="big")
    little = small("little", 1)
    urls = {"big": publish_on(origin, "big", big), "little": publish_on(origin, "little", little)}
    origin.fault_drip("big/*.bin", chunk=16 * 1024, interval=0.05)
    conf = tmp_path / "conf"
    sock = str(sockets / "ctl.sock")
    config = write_config(conf, {"big": urls["big"]}, socket=sock, concurrency=1)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_status(lambda s: by_name(s, "big")["state"] == "downloading", "big downloading")
        edit_config(config, urls, socket=sock, concurrency=1)
        queued = svc.wait_status(lambda s: len(s["models"]) == 2
                                 and by_name(s, "little")["state"] == "queued", "little queued")
        assert by_name(queued, "big")["state"] == "downloading"
        svc.wait_event("published", model="little")
        assert by_name(svc.status(), "big")["version"] is None  # still downloading
        assert not (conf / "site" / "big").exists()
        assert_published(conf / "site", "little", little)
        svc.wait_event("published", model="big")
        assert_published(conf / "site", "big", big)
    table = format_status_table(queued).splitlines()
    assert [row.split()[1] for row in table[2:]] == ["downloading", "queued"]

def test_status_command_and_curl_against_the_running_service(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    a, b = small("a", 1), small("b", 5)
    conf = tmp_path / "conf"
    config = write_config(conf, {"a": publish_on(origin, "a", a),
                                 "b": publish_on(origin, "b", b)},
                          socket=str(sockets / "ctl.sock"))
    origin.fault_status("b/model.json", 404, retry_after=None, times=None)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("published", model="a")
        svc.wait_event("sync-failed", model="b")
        version = ref(conf / "state", "a")

        table = run_cli("status", "-c", config)
        assert table.returncode == 1, table.stderr  # b's last sync failed
        lines = table.stdout.splitlines()
        assert lines[0].startswith("shardsync ") and f"pid {svc.pid}" in lines[0]
        assert lines[1].split()[:3] == ["MODEL", "STATE", "VERSION"]
        row_a = next(ln for ln in lines if ln.startswith("a "))
        assert row_a.split()[:3] == ["a", "idle", version[:12]]
        row_b = next(ln for ln in lines if ln.startswith("b "))
        assert row_b.split()[:3] == ["b", "error", "-"] and "b/model.json" in row_b

        as_json = run_cli("status", "--socket", svc.socket, "--json")
        assert as_json.returncode == 1, as_json.stderr
        doc = json.loads(as_json.stdout)
        assert by_name(doc, "a")["version"] == version
        assert by_name(doc, "b")["state"] == "error" and "404" in by_name(doc, "b")["last_error"]

        curl = subprocess.run(["curl", "-sS", "--unix-socket", svc.socket, "-w", "\n%{http_code}",
                               "http://localhost/v1/status"], capture_output=True, text=True,
                              timeout=30)
        body, _, code = curl.stdout.rpartition("\n")
        assert code == "200", curl.stderr
        assert by_name(json.loads(body), "a")["version"] == version
        health = subprocess.run(["curl", "-sS", "--unix-socket", svc.socket,
                                 "http://localhost/v1/health"], capture_output=True, text=True,
                                timeout=30)
        assert json.loads(health.stdout)["ok"] is True
        assert oct(os.stat(svc.socket).st_mode & 0o777) == oct(0o660)
        assert svc.stop(STOP_WITHIN) == 0
    gone = run_cli("status", "--socket", svc.socket)
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_a_socket_passed_by_systemd_is_used(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    a = small("a", 1)
    conf = tmp_path / "conf"
    configured = sockets / "ctl.sock"
    config = write_config(conf, {"a": publish_on(origin, "a", a)}, socket=str(configured))
    passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    passed.bind(str(sockets / "activated.sock"))
    passed.listen()
    try:
        with service(config, tmp_path, notify, listen=passed) as svc:
            svc.start()
            assert svc.socket == str(sockets / "activated.sock")
            svc.wait_event("published", model="a")  # over the passed socket
            assert by_name(svc.status(), "a")["version"] == ref(conf / "state", "a")
            assert not configured.exists()  # the configured path was never bound
            assert "using the socket systemd passed" in svc.log()
            assert svc.stop(STOP_WITHIN) == 0
        assert (sockets / "activated.sock").exists()  # systemd's socket: not ours to remove
    finally:
        passed.close()


# -- live config ----------------------------------------------------------------------------


def test_config_edits_add_a_model_and_a_broken_edit_keeps_the_old_config(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    a, b, c = small("a", 1), small("b", 3), small("c", 5)
    urls = {n: publish_on(origin, n, m) for n, m in (("a", a), ("b", b), ("c", c))}
    conf = tmp_path / "conf"
    sock = str(sockets / "ctl.sock")
    config = write_config(conf, {"a": urls["a"]}, socket=sock)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("published", model="a")

        # An editor's save (a new file renamed over the old) adds b; b gets published.
        cursor = svc.last_event_id()
        edit_config(config, {"a": urls["a"], "b": urls["b"]}, socket=sock)
        reloaded = svc.wait_event("config-reloaded", since=cursor)
        assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["b"], [], [])
        assert reloaded["reason"] == "the config file changed"
        svc.wait_event("published", model="b", since=cursor)
        assert_published(conf / "site", "b", b)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")

        # A broken save: reported in the event log, the status and the log; a and b run on.
        cursor = svc.last_event_id()
        good_text = config.read_text()
        replace_text(config, good_text + '\n[[model]]\nname = "c"\nurl = "ftp://nope/m.json"\n')
        error = svc.wait_event("config-error", since=cursor)["error"]
        assert str(config) in error and "model[3].url" in error and "ftp://nope" in error
        status = svc.status()
        assert status["service"]["config_error"] == error
        assert [m["name"] for m in status["models"]] == ["a", "b"]
        assert "keeping the running config" in svc.log() and "model[3].url" in svc.log()
        table = run_cli("status", "--socket", sock).stdout
        assert "config error, still running the previous config" in table
        assert "model[3].url" in table
        metrics = parse_metrics(svc.get_text("/metrics"))
        assert metrics["shardsync_config_error"]["samples"] == [({}, 1.0)]
        # The old config still works: a check on demand is done.
        svc.client.post("/v1/models/a/sync")
        assert svc.wait_event("checked", model="a", since=cursor)["version"] == \
            ref(conf / "state", "a")

        # Fixed: the next save is picked up, and the error is gone.
        cursor = svc.last_event_id()
        edit_config(config, {"a": urls["a"], "b": urls["b"], "c": urls["c"]}, socket=sock)
        reloaded = svc.wait_event("config-reloaded", since=cursor)
        assert reloaded["added"] == ["c"]
        svc.wait_event("published", model="c", since=cursor)
        assert_published(conf / "site", "c", c)
        assert svc.status()["service"]["config_error"] is None
        assert svc.stop(STOP_WITHIN) == 0
    assert notify.keys()[-1] == "STOPPING"


def test_sighup_reloads_a_config_the_watcher_cannot_see(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    # -c names a symlink; the file it points to lives in another directory, which the
    # watcher (on the symlink's directory) does not see: only SIGHUP can pick up an edit.
    a, b = small("a", 1), small("b", 3)
    urls = {"a": publish_on(origin, "a", a), "b": publish_on(origin, "b", b)}
    conf, real_dir = tmp_path / "conf", tmp_path / "real"
    keys = {"state_dir": str(conf / "state"), "site_dir": str(conf / "site"),
            "socket": str(sockets / "ctl.sock")}
    real = write_config(real_dir, {"a": urls["a"]}, **keys)
    conf.mkdir()
    config = conf / "shardsync.toml"
    config.symlink_to(real)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("published", model="a")

        # Broken, then SIGHUP: RELOADING=1 ... READY=1 around a failed reload too.
        cursor = svc.last_event_id()
        replace_text(real, 'interval = "soon"\n')
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        svc.signal(signal.SIGHUP)
        error = svc.wait_event("config-error", since=cursor)["error"]
        assert "interval" in error and ":1" in error  # names the key and the line
        reloading = notify.wait_for("RELOADING", "1")
        assert before <= int(reloading["MONOTONIC_USEC"]) <= \
            time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.wait_for("READY", "1")
        with pytest.raises(ShardsyncError, match="HTTP 422"):  # POST /v1/reload says so too
            svc.client.post("/v1/reload")
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")

        # Fixed (adding b), then SIGHUP: picked up.
        cursor = svc.last_event_id()
        edit_config(real, {"a": urls["a"], "b": urls["b"]}, **keys)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        svc.signal(signal.SIGHUP)
        reloaded = svc.wait_event("config-reloaded", since=cursor)
        assert reloaded["reason"] == "SIGHUP" and reloaded["added"] == ["b"]
        reloading = notify.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) >= before
        notify.wait_for("READY", "1")
        svc.wait_event("published", model="b", since=cursor)
        assert_published(conf / "site", "b", b)
        assert svc.client.post("/v1/reload") == {"ok": True, "models": ["a", "b"]}
        assert svc.stop(STOP_WITHIN) == 0
    states = notify.keys()
    assert states[0] == "READY" and states[-1] == "STOPPING"
    # Two SIGHUPs and two POST /v1/reload; the watcher saw nothing.
    assert states[1:-1] == ["RELOADING", "READY"] * 4


def test_a_removed_model_stops_and_is_unpublished_after_the_grace_period(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    grace = 2.0
    a, b, c = small("a", 1), small("b", 3), small("c", 5)
    urls = {n: publish_on(origin, n, m) for n, m in (("a", a), ("b", b), ("c", c))}
    conf = tmp_path / "conf"
    sock = str(sockets / "ctl.sock")
    config = write_config(conf, urls, socket=sock)
    with service(config, tmp_path, notify, **{GRACE_ENV: str(grace)}) as svc:
        svc.start()
        for name in urls:
            svc.wait_event("published", model=name)

        # c is removed and re-added at once: its pending removal is called off.
        cursor = svc.last_event_id()
        edit_config(config, {"a": urls["a"], "b": urls["b"]}, socket=sock)
        assert svc.wait_event("config-reloaded", since=cursor)["removed"] == ["c"]
        cursor = svc.last_event_id()
        edit_config(config, urls, socket=sock)
        assert svc.wait_event("config-reloaded", since=cursor)["added"] == ["c"]

        # b gets a new version, dripped so slowly that the download is still running...
        publish_on(origin, "b", small("b", 9))
        origin.fault_drip("b/*.bin", chunk=512, interval=0.2)
        svc.client.post("/v1/models/b/sync")
        svc.wait_status(lambda s: by_name(s, "b")["state"] == "downloading", "b downloading")

        # ... when b is removed from the config: it stops at once...
        cursor = svc.last_event_id()
        edit_config(config, {"a": urls["a"], "c": urls["c"]}, socket=sock)
        reloaded = svc.wait_event("config-reloaded", since=cursor)
        asked = len(origin.requests("b/*"))
        assert reloaded["removed"] == ["b"]
        assert [m["name"] for m in svc.status()["models"]] == ["a", "c"]
        with pytest.raises(NotFoundError):
            svc.client.get("/v1/models/b")

        # ... and its site directory goes after the grace period (served until then).
        gone = svc.wait_event("model-unpublished", model="b", since=cursor)
        assert gone["time"] - reloaded["time"] >= grace - 0.01
        assert not (conf / "site" / "b").exists()
        assert not (conf / "state" / "refs" / "b").exists()
        assert len(origin.requests("b/*")) == asked  # nothing asked for b since removal
        events = svc.events_since(0)
        assert not any(e["model"] == "b" and e["type"] == "published" and e["id"] > cursor
                       for e in events)
        # c's removal, due a grace period after its own (earlier) removal, never came.
        assert not any(e["type"] == "model-unpublished" and e["model"] == "c" for e in events)
        assert_published(conf / "site", "a", a)
        assert_published(conf / "site", "c", c)
        assert svc.stop(STOP_WITHIN) == 0


# -- shutdown and resume ---------------------------------------------------------------------


def test_sigterm_mid_download_exits_0_then_a_restart_resumes(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    assert origin.root is not None
    model = big_model(origin.root, 16 * 1024 * 1024, seed=3, name="m")  # 4 x 4 MiB
    conf = tmp_path / "conf"
    config = write_config(conf, {"big": origin.url_for("m/model.json")},
                          socket=str(sockets / "ctl.sock"))
    partial = conf / "state" / "partial"
    drip = 64 * 1024
    # ~1.3 MB/s per connection: a few seconds in all, caught well before the end.
    origin.fault_drip("m/*.bin", chunk=drip, interval=0.05)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_status(lambda s: s["models"][0]["progress"]["bytes_done"] > model.size // 4,
                        "a quarter downloaded")
        svc.signal(signal.SIGTERM)
        assert svc.wait(STOP_WITHIN) == 0
        notify.wait_for("STOPPING", "1")
    first = origin.bytes_sent("m/*.bin")
    held_sizes = [p.stat().st_size for p in partial.glob("*.data")]
    held = sum(held_sizes)
    assert 0 < held < model.size  # stopped mid-way, partials checkpointed
    # Files that finished before the stop: their download records name them.
    finished = sum(json.loads(p.read_text())["size"]
                   for p in (conf / "state" / "downloads").glob("*.json"))
    assert not (conf / "site" / "big").exists()
    assert "Traceback" not in svc.log()

    origin.clear_faults()
    log_len = len(origin.requests())
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("published", model="big")
        assert_published(conf / "site", "big", model)
        assert svc.stop(STOP_WITHIN) == 0
    second = [e for e in origin.requests()[log_len:] if e.path.endswith(".bin")]
    resumed = [e for e in second if "range" in e.headers]
    assert resumed and all(e.status == 206 and "if-range" in e.headers for e in resumed)
    shards = model.size - len(model.manifest)
    # The restart fetched exactly what the partials lacked, plus the overlap each resume
    # re-asks to compare: nothing held was fetched again, nor any finished file.
    overlap = sum(h - resume_start(h) for h in held_sizes)
    assert sum(e.body_bytes for e in second) == shards - held - finished + overlap
    # Lost in flight at the stop (sent, never written): at most one read per connection.
    assert first - held - finished <= 4 * (READ_NUM_BYTES + drip)
    assert origin.bytes_sent("m/*.bin") <= shards + 4 * (READ_NUM_BYTES + drip)
    assert os.listdir(partial) == []


# -- checks on demand ---------------------------------------------------------------------------


def test_post_sync_checks_every_model_or_one(
    origin: Origin, tmp_path: Path, sockets: Path
) -> None:
    a, b = small("a", 1), small("b", 3)
    urls = {"a": publish_on(origin, "a", a), "b": publish_on(origin, "b", b)}
    conf = tmp_path / "conf"
    config = write_config(conf, urls, socket=str(sockets / "ctl.sock"))
    # This one tells "systemd" through an abstract socket address (NOTIFY_SOCKET=@...).
    notify = NotifySocket(Path(f"shardsync-test-{os.getpid()}-{sockets.name}"), abstract=True)
    with notify, service(config, tmp_path, notify) as svc:
        svc.start()  # READY=1 came to the abstract socket
        svc.wait_event("published", model="a")
        svc.wait_event("published", model="b")

        cursor = svc.last_event_id()
        asked_a, asked_b = len(origin.requests("a/model.json")), len(origin.requests("b/*.json"))
        assert sorted(svc.client.post("/v1/sync")["accepted"]) == ["a", "b"]
        svc.wait_event("checked", model="a", since=cursor)
        svc.wait_event("checked", model="b", since=cursor)
        # Conditional requests at the origin: 304s, no body.
        new_a = origin.requests("a/model.json")[asked_a:]
        assert new_a and all(e.status == 304 for e in new_a)
        assert len(origin.requests("b/*.json")) > asked_b

        # One model: a changed shard becomes a new version; b is not asked.
        cursor = svc.last_event_id()
        asked_b = len(origin.requests("b/*"))
        a2 = small("a", 7)
        publish_on(origin, "a", a2)
        assert svc.client.post("/v1/models/a/sync") == {"accepted": ["a"]}
        published = svc.wait_event("published", model="a", since=cursor)
        assert published["version"] == assert_published(conf / "site", "a", a2)
        assert len(origin.requests("b/*")) == asked_b

        with pytest.raises(NotFoundError, match="no model 'nope'"):
            svc.client.post("/v1/models/nope/sync")
        curl = subprocess.run(["curl", "-sS", "-X", "POST", "--unix-socket", svc.socket,
                               "-w", "\n%{http_code}", "http://localhost/v1/models/nope/sync"],
                              capture_output=True, text=True, timeout=30)
        body, _, code = curl.stdout.rpartition("\n")
        assert code == "404" and "nope" in json.loads(body)["error"]
        assert svc.stop(STOP_WITHIN) == 0


#: The soft limit on open files of the flood test. The service itself had 25 open after
#: its first sync (interpreter, trio, watcher, store, event log, its listener); the
#: control socket adds at most MAX_CONNECTIONS + MAX_REFUSING, a sync a few more. A
#: flood of FLOOD idle connections would take twice the limit if each were kept.
NOFILE = 160
FLOOD = 2 * NOFILE


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_idle_control_connections_under_a_low_file_limit_leaves_syncs_working(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    a, b = small("a", 1), small("b", 3)
    urls = {"a": publish_on(origin, "a", a), "b": publish_on(origin, "b", b)}
    conf = tmp_path / "conf"
    ctl = str(sockets / "ctl.sock")
    config = write_config(conf, {"a": urls["a"]}, socket=ctl)
    with service(config, tmp_path, notify, nofile=NOFILE) as svc, contextlib.ExitStack() as held:
        svc.start()
        svc.wait_event("published", model="a")
        cursor = svc.last_event_id()
        before = open_files(svc.pid)
        for _ in range(FLOOD):  # connected, and never a byte sent
            conn = held.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            # Blocking, as most clients connect: with the listen backlog full, connect()
            # waits for the service to accept (at most WAIT: SO_SNDTIMEO bounds it).
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(WAIT), 0))
            conn.connect(ctl)

        # A model added while the flood holds on: the watcher reads the config, the sync
        # opens connections to the origin and files in the store, and publishes.
        edit_config(config, urls, socket=ctl)
        site_b = conf / "site" / "b" / b.manifest_name
        deadline = time.monotonic() + WAIT
        while not site_b.exists():
            svc.check_alive()
            assert time.monotonic() < deadline, f"b not published\n{svc.log_tail()}"
            time.sleep(0.05)
        assert_published(conf / "site", "b", b)
        # The flood costs the service no more than the cap's descriptors (plus a few the
        # sync may still hold), not one per connection.
        assert open_files(svc.pid) <= before + MAX_CONNECTIONS + MAX_REFUSING + 8

        held.close()  # the flood ends; the socket serves again
        published = svc.wait_event("published", model="b", since=cursor)
        assert published["version"] == assert_published(conf / "site", "b", b)
        assert not [e for e in svc.events_since(cursor)
                    if "fail" in e["type"] or e["type"] == "config-error"]
        assert by_name(svc.status(), "b")["last_error"] is None
        assert svc.stop(STOP_WITHIN) == 0
    assert "Too many open files" not in svc.log()


# -- events, metrics, versions -------------------------------------------------------------------


def test_event_cursor_survives_a_restart_and_metrics_parse(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    shared = bytes(range(256)) * 64  # 16 KiB in both models: stored once
    a = tfjs_model("graph-model", [{"shared.bin": shared, "a.bin": b"\x01" * 4096}], tag="a")
    b = tfjs_model("graph-model", [{"shared.bin": shared, "b.bin": b"\x02" * 4096}], tag="b")
    urls = {"a": publish_on(origin, "a", a), "b": publish_on(origin, "b", b)}
    conf = tmp_path / "conf"
    state = conf / "state"
    config = write_config(conf, urls, socket=str(sockets / "ctl.sock"))
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("published", model="a")
        svc.wait_event("published", model="b")
        svc.wait_status(lambda s: all(m["state"] == "idle" for m in s["models"]), "all idle")

        metrics = parse_metrics(svc.get_text("/metrics"))
        def sample(family: str, model: str | None = None) -> float:
            labels = {"model": model} if model else {}
            (value,) = [v for lb, v in metrics[family]["samples"] if lb == labels]
            return value

        for family, kind in (("shardsync_model_last_success_timestamp_seconds", "gauge"),
                             ("shardsync_model_downloaded_bytes_total", "counter"),
                             ("shardsync_model_errors_total", "counter"),
                             ("shardsync_store_objects", "gauge"),
                             ("shardsync_store_bytes", "gauge"),
                             ("shardsync_dedupe_saved_bytes", "gauge")):
            assert metrics[family]["type"] == kind, family
        for name in ("a", "b"):
            # Shard bodies (sync.py does not count the manifest's body in Progress.received).
            assert sample("shardsync_model_downloaded_bytes_total", name) == \
                origin.bytes_sent(f"{name}/*.bin")
            assert sample("shardsync_model_errors_total", name) == 0
            assert sample("shardsync_model_last_success_timestamp_seconds", name) == \
                pytest.approx(by_name(svc.status(), name)["last_success"], abs=0.01)
        objects = object_files(state)
        assert sample("shardsync_store_objects") == len(objects) == 5  # 2 manifests, 3 shards
        assert sample("shardsync_store_bytes") == sum(p.stat().st_size for p in objects)
        assert sample("shardsync_dedupe_saved_bytes") == len(shared)

        # A second version of a: /v1/models/a lists both, the current one first.
        first_version = ref(state, "a")
        cursor = svc.last_event_id()
        a2 = tfjs_model("graph-model", [{"shared.bin": shared, "a.bin": b"\x03" * 4096}],
                        tag="a")
        publish_on(origin, "a", a2)
        svc.client.post("/v1/models/a/sync")
        second_version = svc.wait_event("published", model="a", since=cursor)["version"]
        doc = svc.client.get("/v1/models/a")
        assert doc["name"] == "a" and doc["version"] == second_version == ref(state, "a")
        assert [(v["version"], v["current"]) for v in doc["versions"]] == [
            (second_version, True), (first_version, False)]
        assert all(v["files"] == 3 and v["bytes"] == len(a2.manifest) + len(shared) + 4096
                   for v in doc["versions"][:1])
        assert doc["versions"][1]["until"] is not None and doc["versions"][0]["until"] is None

        last = svc.last_event_id()
        assert svc.stop(STOP_WITHIN) == 0

    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_event("service-started", since=last)  # long-poll from the old cursor
        after = svc.events_since(last)
        ids = [e["id"] for e in after]
        assert ids == list(range(last + 1, last + 1 + len(ids)))  # ids continue, none lost
        assert [e["type"] for e in after[:2]] == ["service-stopping", "service-started"]
        assert after[1]["pid"] == svc.pid
        only_new = svc.events_since(after[0]["id"])
        assert only_new and only_new[0]["id"] == after[1]["id"]
        assert all(e["id"] > after[0]["id"] for e in only_new)
        # The old run's events are still there for a cursor from before.
        old = svc.events_since(0)
        assert any(e["type"] == "published" and e["version"] == first_version for e in old)
        metrics = parse_metrics(svc.get_text("/metrics"))
        assert {lb["model"] for lb, _ in
                metrics["shardsync_model_errors_total"]["samples"]} == {"a", "b"}
        assert svc.stop(STOP_WITHIN) == 0


# -- the grace knob and the watchdog loop ----------------------------------------------------------


def test_grace_from_env():
    assert grace_from_env({}) == GRACE_SECONDS
    assert grace_from_env({GRACE_ENV: " 2.5 "}) == 2.5
    assert grace_from_env({GRACE_ENV: "0"}) == 0.0
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ConfigError, match=GRACE_ENV):
            grace_from_env({GRACE_ENV: bad})


def test_a_bad_grace_value_is_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {})
    run = subprocess.run(cli_command("run", "-c", config), capture_output=True, text=True,
                         timeout=60, env={**os.environ, GRACE_ENV: "soon"})
    assert run.returncode == 2 and GRACE_ENV in run.stderr


async def test_run_watchdog_pings_only_while_healthy(notify: NotifySocket, autojump_clock):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "10000000"})
    answers = iter([True, True, False, False, True])  # asked at 0, 5, 10, 15, 20 s
    asked = []

    def healthy() -> bool:
        asked.append(trio.current_time())
        return next(answers)

    start = trio.current_time()
    with trio.move_on_after(22):
        await n.run_watchdog(healthy)
    n.close()
    assert [t - start for t in asked] == [0, 5, 10, 15, 20]
    assert notify.drain() == [{"WATCHDOG": "1"}] * 3


def test_status_and_the_model_route_say_whether_each_model_is_signed_by_whom_and_until(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    from shardsync.daemon.signing import generate_key, key_id, parse_public_key, sign_manifest

    public = generate_key(tmp_path / "k.pem")
    signed_url = publish_on(origin, "signed", small("signed", 1))
    sign_manifest(tmp_path / "k.pem", origin.root / "signed" / "model.json",
                  expires_in=30 * 86400, version=4)
    plain_url = publish_on(origin, "plain", small("plain", 5))
    conf = tmp_path / "conf"
    config = write_config(conf, {"signed": signed_url, "plain": plain_url},
                          socket=str(sockets / "ctl.sock"),
                          model_keys={"signed": {"public_keys": [public]}})
    expires = json.loads((origin.root / "signed" / "model.json.sig.json").read_bytes()
                         )["signed"]["expires"]
    keyid = key_id(parse_public_key(public))
    want = {"signed": True, "keyid": keyid, "version": 4, "expires": expires}
    unsigned = {"signed": False, "keyid": None, "version": None, "expires": None}

    def both_published(s: dict) -> bool:
        return all(m["version"] and m["state"] == "idle" for m in s["models"])

    with service(config, tmp_path, notify) as svc:
        svc.start()
        status = svc.wait_status(both_published, "both models published")
        assert by_name(status, "signed")["signature"] == want
        assert by_name(status, "plain")["signature"] == unsigned
        assert svc.client.get("/v1/models/signed")["signature"] == want
        table = subprocess.run(cli_command("status", "-c", config), capture_output=True,
                               text=True, timeout=30)
        assert table.returncode == 0, table.stderr
        (row,) = [line for line in table.stdout.splitlines() if line.startswith("signed ")]
        assert f"v4 key {keyid[:8]} until {expires[:10]}" in row
        assert svc.stop(STOP_WITHIN) == 0
    # Restarted, with the origin failing: the version it still serves was signed, and
    # the status says so from the store's trust record.
    origin.fault_status("signed/*", 404, retry_after=None, times=None)
    with service(config, tmp_path, notify) as svc:
        svc.start()
        svc.wait_status(lambda s: by_name(s, "signed")["last_error"], "the check failing")
        as_json = subprocess.run(cli_command("status", "-c", config, "--json"),
                                 capture_output=True, text=True, timeout=30)
        assert by_name(json.loads(as_json.stdout), "signed")["signature"] == want
        assert svc.stop(STOP_WITHIN) == 0


def test_status_says_why_a_check_is_retrying_and_forgets_it_once_through(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    # An origin failing for a while (here: 503 with Retry-After 2 s, three times) is
    # retried within one sync for ~30 s before that sync fails; meanwhile status says
    # which file, why, and when the next try is, instead of a bare "checking".
    model = small("r", 1)
    url = publish_on(origin, "r", model)
    origin.fault_status("r/model.json", 503, retry_after=2, times=3)
    conf = tmp_path / "conf"
    config = write_config(conf, {"r": url}, socket=str(sockets / "ctl.sock"))
    with service(config, tmp_path, notify) as svc:
        svc.start()
        status = svc.wait_status(lambda s: s["models"][0]["retrying"] is not None,
                                 "r retrying")
        m = by_name(status, "r")
        retrying = m["retrying"]
        assert m["state"] == "checking" and m["last_error"] is None
        assert retrying["file"] == url and "503" in retrying["error"], retrying
        assert retrying["attempt"] >= 1 and retrying["next_try"] > time.time() - 1
        assert retrying["next_try_at"].endswith("Z")
        table = format_status_table(status)
        assert f"retrying: r: file {url}: " in table and "next try in" in table, table

        svc.wait_event("published", model="r")
        idle = by_name(svc.wait_status(lambda s: s["models"][0]["state"] == "idle",
                                       "r idle"), "r")
        assert idle["retrying"] is None and idle["last_error"] is None
        assert "retrying:" not in format_status_table(svc.status())
