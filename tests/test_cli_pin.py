"""`shardsync rollback`, `pin` and `unpin` (daemon/pinning.py), as an operator runs them:
real `shardsync` processes on a real config and store against the test origin, without
a service (on the store) and beside a running `shardsync run` (through its control
socket, `POST /v1/models/<name>/pin|unpin|rollback`).

A pinned model is still checked; what the origin offers is downloaded and held back
(status: ``pinned.waiting``), never published, until an unpin. Exit 2 for a model or a
version that is not there (or no longer kept).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from storehelpers import ModelFiles, versioned_model
from synchelpers import assert_published, publish_on, run_cli, write_config

from shardsync.daemon.httpserver import MAX_BODY_BYTES
from shardsync.store import NotFoundError, ShardsyncError


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as d:
        yield d


def sync_json(config: Path) -> dict:
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    (doc,) = json.loads(run.stdout)["models"]
    return doc


def cli_json(*args: str | Path) -> dict:
    run = run_cli(*args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_rollback_pin_and_unpin_on_the_store_without_a_service(
        origin: Origin, tmp_path: Path) -> None:
    m1, m2, m3 = versioned_model(1), versioned_model(2), versioned_model(3)
    config = write_config(tmp_path / "conf", {"m": publish_on(origin, "m", m1)})
    site, state = tmp_path / "conf" / "site", tmp_path / "conf" / "state"
    v1 = sync_json(config)["version"]
    publish_on(origin, "m", m2)
    v2 = sync_json(config)["version"]
    assert v2 != v1 and assert_published(site, "m", m2) == v2

    doc = cli_json("rollback", "-c", config, "m")
    assert doc["via"] == "store" and doc["version"] == v1
    assert doc["pinned"]["version"] == v1 and doc["pinned"]["waiting"] is None
    assert doc["pinned"]["since_at"].endswith("Z")
    assert assert_published(site, "m", m1) == v1  # v1's bytes, its entry point again
    assert json.loads((state / "pins" / "m.json").read_text())["version"] == v1

    # The origin changes: checked and downloaded, but held back.
    publish_on(origin, "m", m3)
    result = sync_json(config)
    assert result["changed"] is False and result["version"] == v1
    v3 = result["held_back"]
    assert v3 not in (None, v1, v2)
    assert assert_published(site, "m", m1) == v1
    assert cli_json("pin", "-c", config, "m")["pinned"]["waiting"] == v3
    # A second check asks conditionally about what it holds back: nothing is fetched.
    again = sync_json(config)
    assert again["held_back"] == v3 and again["files_fetched"] == 0

    # Unpinned: what was held back is published at once, from the store alone.
    doc = cli_json("unpin", "-c", config, "m")
    assert doc["pinned"] is None and doc["version"] == v3
    assert assert_published(site, "m", m3) == v3
    result = sync_json(config)
    assert result["changed"] is False and result["version"] == v3
    assert result["held_back"] is None and result["files_fetched"] == 0

    # Pinning a kept version that is not current makes it current, like a rollback.
    doc = cli_json("pin", "-c", config, "m", v1)
    assert doc["version"] == v1 and doc["pinned"]["version"] == v1
    assert assert_published(site, "m", m1) == v1
    run = run_cli("pin", "-c", config, "m")  # the text form, on stdout
    assert run.returncode == 0 and run.stdout == f"m: pinned at {v1}\n"


def test_an_unknown_model_or_a_version_not_kept_is_exit_2(
        origin: Origin, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", {"m": publish_on(origin, "m", versioned_model(1))})
    v1 = sync_json(config)["version"]
    for args in (("rollback", "-c", config, "nope"), ("pin", "-c", config, "nope"),
                 ("unpin", "-c", config, "nope")):
        run = run_cli(*args)
        assert run.returncode == 2, run.stderr
        assert "nope" in run.stderr and "Traceback" not in run.stderr
    run = run_cli("rollback", "-c", config, "m")
    assert run.returncode == 2 and "no earlier version is kept" in run.stderr
    run = run_cli("rollback", "-c", config, "m", "0123456789abcdef", "--json")
    assert run.returncode == 2
    doc = json.loads(run.stdout)
    assert doc["exit"] == 2 and doc["error"] == (
        f"model m: version 0123456789abcdef is not kept (kept: {v1})")
    assert not (tmp_path / "conf" / "state" / "pins" / "m.json").exists()


def wait_checked(svc: ServiceProcess, cursor: int) -> dict:
    """Ask the service to check m now; its next check event after ``cursor``."""
    svc.client.post("/v1/models/m/sync")
    return svc.wait_event("checked", model="m", since=cursor)


def publish_and_wait(svc: ServiceProcess, origin: Origin, model: ModelFiles) -> str:
    cursor = svc.last_event_id()
    publish_on(origin, "m", model)
    svc.client.post("/v1/models/m/sync")
    version: str = svc.wait_event("published", model="m", since=cursor)["version"]
    return version


def test_through_a_running_service_and_across_its_restart(
        origin: Origin, tmp_path: Path, sockets: Path) -> None:
    models = [versioned_model(n) for n in range(1, 5)]
    conf = tmp_path / "conf"
    config = write_config(conf, {"m": publish_on(origin, "m", models[0])},
                          socket=str(sockets / "ctl.sock"), interval="1h", keep_versions=2)
    site, env = conf / "site", {"SHARDSYNC_GRACE_SECONDS": "0"}
    with NotifySocket(sockets / "notify") as notify:
        with ServiceProcess(config, tmp_path / "service.log", notify=notify, env=env) as svc:
            svc.start()
            svc.wait_event("published", model="m")
            v1 = svc.model("m")["version"]
            v2 = publish_and_wait(svc, origin, models[1])
            v3 = publish_and_wait(svc, origin, models[2])
            # v1 is gone (keep_versions 2, no grace): it cannot be rolled back to.
            run = run_cli("rollback", "-c", config, "m", v1)
            assert run.returncode == 2 and f"version {v1} is not kept" in run.stderr

            doc = cli_json("rollback", "-c", config, "m")
            assert doc["via"] == "service" and doc["version"] == v2
            assert assert_published(site, "m", models[1]) == v2
            status = svc.model("m")
            assert status["version"] == v2 and status["pinned"]["version"] == v2

            cursor = svc.last_event_id()
            publish_on(origin, "m", models[3])
            checked = wait_checked(svc, cursor)
            v4 = checked["held_back"]
            assert checked["version"] == v2 and v4 not in (None, v1, v2, v3)
            assert svc.model("m")["pinned"]["waiting"] == v4
            assert assert_published(site, "m", models[1]) == v2
            table = run_cli("status", "-c", config)
            assert table.returncode == 0, table.stderr
            assert f"{v2[:12]} pinned" in table.stdout
            assert f"pinned: m at {v2[:12]} since " in table.stdout
            assert f"{v4[:12]} waiting (unpin to publish it)" in table.stdout
            cursor = svc.last_event_id()
            assert svc.stop() == 0

        # The pin, and what it holds back, survive the restart; its first check
        # publishes nothing.
        with ServiceProcess(config, tmp_path / "service2.log", notify=notify, env=env) as svc:
            svc.start()
            svc.wait_event("checked", model="m", since=cursor)
            status = svc.model("m")
            assert status["version"] == v2
            assert status["pinned"]["version"] == v2 and status["pinned"]["waiting"] == v4
            assert assert_published(site, "m", models[1]) == v2

            # The routes themselves: bad requests first.
            with pytest.raises(NotFoundError, match="no model 'nope'"):
                svc.client.post("/v1/models/nope/pin")
            with pytest.raises(NotFoundError, match=f"version {v1} is not kept"):
                svc.client.post("/v1/models/m/pin", {"version": v1})
            with pytest.raises(ShardsyncError, match="HTTP 400"):
                svc.client.post("/v1/models/m/pin", {"version": 7})
            with pytest.raises(ShardsyncError, match="HTTP 400"):
                svc.client.post("/v1/models/m/unpin", {"version": v2})
            with pytest.raises(ShardsyncError, match="HTTP 413"):
                svc.client.post("/v1/models/m/rollback", {"version": "x" * MAX_BODY_BYTES})
            # An unpin publishes what waited, and checks at once.
            cursor = svc.last_event_id()
            doc = svc.client.post("/v1/models/m/unpin")
            assert doc == {"name": "m", "version": v4, "pinned": None}
            assert assert_published(site, "m", models[3]) == v4
            checked = svc.wait_event("checked", model="m", since=cursor)
            assert checked["version"] == v4 and "held_back" not in checked
            assert svc.model("m")["pinned"] is None and svc.model("m")["version"] == v4

            # Kept now: v4 and v2 (current before it); v3 went with no grace.
            with pytest.raises(NotFoundError, match=f"kept: {v4}, {v2}"):
                svc.client.post("/v1/models/m/pin", {"version": v3})
            doc = svc.client.post("/v1/models/m/pin", {"version": v2})
            assert doc["version"] == v2 and doc["pinned"]["version"] == v2
            assert assert_published(site, "m", models[1]) == v2
            assert svc.model("m")["version"] == v2
            run = run_cli("unpin", "-c", config, "m")
            assert run.returncode == 0 and "checking for updates now" in run.stdout
            assert svc.stop() == 0
