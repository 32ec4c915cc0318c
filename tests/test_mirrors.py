"""``mirrors`` (docs/design.md, "Mirrors and file:// URLs"): tried in order when ``url``
fails, the whole model from one source, the same version id whichever served it.

Sources are real: test origins on 127.0.0.1 (one stopped, one failing by its fault
switches), directories read as ``file://`` URLs, and the real ``shardsync`` CLI and
service for the config and the status. What moved is judged from each origin's own
request log.
"""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess
from storehelpers import ModelFiles, store_at, tfjs_model, write_model
from synchelpers import FAST, SyncEnv, assert_published, publish_on, run_cli, write_config

from shardsync.daemon.config import ModelConfig, load_config
from shardsync.daemon.errors import ConfigError, UpstreamError
from shardsync.daemon.fetch import Fetcher
from shardsync.daemon.httpclient import make_client
from shardsync.daemon.statustable import format_status_table
from shardsync.daemon.sync import Syncer
from shardsync.daemon.urls import file_url

SHARDS = ("group1-shard1of2.bin", "group1-shard2of2.bin")


def model(n: int) -> ModelFiles:
    return tfjs_model("graph-model", [{SHARDS[0]: bytes([n]) * 8192,
                                       SHARDS[1]: bytes([n + 1]) * 4096}], tag=n)


@asynccontextmanager
async def syncer_for(root: Path, *models: ModelConfig) -> AsyncIterator[SyncEnv]:
    """A store and a Syncer whose client knows ``models``' userinfo (url and mirrors)."""
    state, site = root / "state", root / "site"
    with store_at(state, site, grace=0) as store:
        async with make_client(FAST, models=models) as client:
            yield SyncEnv(state, site, store, Syncer(store, Fetcher(client, FAST)))


def asked(origin: Origin) -> list[str]:
    """The paths ``origin`` was asked for since its counters were reset."""
    return [e.path for e in origin.requests()]


# -- config ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardsync.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_mirrors_are_read_like_url_with_their_userinfo_split_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = ["http://gw:s%40cret@gateway.lan/m/model.json", "file:///media/usb/m/model.json"]
        """))
    (m,) = cfg.models
    assert m.mirrors == ("http://gateway.lan/m/model.json", "file:///media/usb/m/model.json")
    assert m.mirror_userinfo == (("gw", "s@cret"), None)
    assert "cret" not in repr(m)
    assert [(s.url, s.userinfo, s.mirrors) for s in m.sources()] == [
        ("https://origin.example/m/model.json", None, ()),
        ("http://gateway.lan/m/model.json", ("gw", "s@cret"), ()),
        ("file:///media/usb/m/model.json", None, ())]
    # A mirror's download records are kept like url's (gc and prune_downloads).
    assert cfg.manifest_urls == {s.url for s in m.sources()}


@pytest.mark.parametrize(("value", "why"), [
    ('"http://gw/m/model.json"', "must be a list"),
    ('[3]', "mirror 1 must be a string"),
    ('["http://gw/m/model.json", "ftp://u:hunter2@gw/m/model.json"]', "mirror 2: URL"),
    ('["file:///media/../m/model.json"]', "mirror 1: file URL"),
    ('["http://gw/m/other.json"]', "names the manifest 'other.json', not 'model.json'"),
    ('["https://origin.example/m/model.json"]', "listed twice"),
    ('["http://gw/m/model.json", "http://gw/m/model.json"]', "mirror 2: 'http://gw/m/model.json' "
                                                             "is listed twice"),
])
def test_a_bad_mirror_is_a_config_error_naming_the_key_and_line(
    tmp_path: Path, value: str, why: str
) -> None:
    path = write(tmp_path, f"""
        interval = "1h"

        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = {value}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.key, err.line) == ("model[1].mirrors", 6), str(err)
    assert why in str(err) and "hunter2" not in str(err)
    run = run_cli("sync", "-c", path)
    assert run.returncode == 2 and "model[1].mirrors" in run.stderr, run.stderr


def test_an_origin_that_signs_what_a_mirror_serves_holds_the_model_to_its_keys(
    tmp_path: Path,
) -> None:
    key = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
    cfg = load_config(write(tmp_path, f"""
        [[origin]]
        prefix = "http://gateway.lan/"
        public_keys = ["{key}"]

        [[model]]
        name = "m"
        url = "https://origin.example/m/model.json"
        mirrors = ["http://gateway.lan/m/model.json"]
        """))
    assert cfg.models[0].public_keys == (bytes(range(32)),)


# -- syncing from the sources in order ---------------------------------------------------------


async def test_url_down_then_mirror_1_down_then_mirror_2_serves_then_url_is_back(
    tmp_path: Path,
) -> None:
    roots = [tmp_path / n for n in ("url", "m1", "m2")]
    for r in roots:
        r.mkdir()
    url_origin, m1, m2 = (Origin(r).start() for r in roots)
    try:
        url, mirror1, mirror2 = (publish_on(o, "m", model(1)) for o in (url_origin, m1, m2))
        port = url_origin.port
        url_origin.stop()  # url: connection refused, after the fetcher's retries
        m1.fault_status("*", 503, retry_after=None, times=None)  # mirror 1: 5xx after retries
        config = ModelConfig("m", url, 1800.0, mirrors=(mirror1, mirror2))
        async with syncer_for(tmp_path, config) as env:
            first = await env.syncer.sync(config)
            assert first.ok and first.changed, first.error
            assert first.source == mirror2 and first.to_json()["source"] == mirror2
            version = assert_published(env.site, "m", model(1))
            assert first.version == version
            assert len(asked(m1)) == FAST.attempts  # the manifest, tried and given up

            # url back (the same address): the next sync asks url first, and publishes
            # nothing new: the version id is the content's, whoever served it.
            url_origin = Origin(roots[0], port=port).start()
            m2.reset_counters()
            again = await env.syncer.sync(config)
            assert again.ok and not again.changed, again.error
            assert (again.version, again.source) == (version, url)
            assert asked(m2) == []
            # The bytes that move: url's files are known by URL, so url is read in full
            # once (stored deduplicated: no new object) ...
            assert sorted(asked(url_origin)) == sorted(["m/model.json", *(f"m/{s}"
                                                                          for s in SHARDS)])
            assert again.files_fetched == 2
            # ... and from then on asked conditionally: 304s, no body.
            url_origin.reset_counters()
            third = await env.syncer.sync(config)
            assert third.ok and not third.changed and third.received == 0
            assert (third.files_reused, third.source) == (2, url)
            assert all(e.status == 304 for e in url_origin.requests())
            assert_published(env.site, "m", model(1))
    finally:
        for o in (url_origin, m1, m2):
            o.stop()


async def test_bytes_that_fail_their_group_check_at_url_are_taken_from_a_mirror(
    tmp_path: Path, origin: Origin
) -> None:
    good = model(3)
    url = publish_on(origin, "m", good)
    origin.set_file(f"m/{SHARDS[1]}", b"\x00" * 100)  # shorter than its group says
    usb = tmp_path / "usb" / "m"
    mirror = file_url(write_model(usb, good))
    config = ModelConfig("m", url, 1800.0, mirrors=(mirror,))
    async with syncer_for(tmp_path, config) as env:
        result = await env.syncer.sync(config)
        assert result.ok and result.changed and result.source == mirror, result.error
        assert result.version == assert_published(env.site, "m", good)


async def test_when_every_source_fails_the_error_says_what_each_said(
    tmp_path: Path, origin: Origin
) -> None:
    url = origin.url_for("m/model.json")  # 404: nothing there
    mirror = file_url(tmp_path / "usb" / "m" / "model.json")  # 404: no such file
    config = ModelConfig("m", url, 1800.0, mirrors=(mirror,))
    async with syncer_for(tmp_path, config) as env:
        result = await env.syncer.sync(config)
    assert isinstance(result.error, UpstreamError) and result.error.status == 404
    text = str(result.error)
    assert text.startswith("model m: file " + url) and text.count("model m") == 1, text
    assert f"; mirror 1: file {mirror}: " in text and result.source is None


async def test_a_mirror_gets_its_own_userinfo_and_url_none_of_it(tmp_path: Path) -> None:
    roots = [tmp_path / "url", tmp_path / "gw"]
    for r in roots:
        r.mkdir()
    with Origin(roots[0]) as url_origin, Origin(roots[1]) as gw:
        url_origin.fault_status("*", 404, retry_after=None, times=None)
        mirror = publish_on(gw, "m", model(5))
        with_userinfo = mirror.replace("http://", "http://kiosk:hunter2@")
        path = write_config(tmp_path / "conf", {"m": url_origin.url_for("m/model.json")},
                            model_keys={"m": {"mirrors": [with_userinfo]}})
        (config,) = load_config(path).models
        async with syncer_for(tmp_path, config) as env:
            result = await env.syncer.sync(config)
        assert result.ok and result.source == mirror, result.error
        basic = "Basic " + base64.b64encode(b"kiosk:hunter2").decode()
        assert {e.headers.get("authorization") for e in gw.requests()} == {basic}
        assert all("authorization" not in e.headers for e in url_origin.requests())
        assert "hunter2" not in json.dumps(result.to_json())


def test_a_file_mirror_serves_the_cli_with_no_network(tmp_path: Path) -> None:
    # url is a file:// too, on a medium that is not mounted: nothing here opens a socket.
    url = file_url(tmp_path / "unmounted" / "m" / "model.json")
    mirror = file_url(write_model(tmp_path / "usb" / "m", model(7)))
    config = write_config(tmp_path / "conf", {"m": url}, model_keys={"m": {"mirrors": [mirror]}})
    run = run_cli("sync", "-c", config, "--json")
    assert run.returncode == 0, run.stderr
    (result,) = json.loads(run.stdout)["models"]
    assert result["changed"] and result["source"] == mirror, result
    assert result["version"] == assert_published(tmp_path / "conf" / "site", "m", model(7))


# -- what the service says --------------------------------------------------------------------


def test_status_and_events_say_which_source_served_each_version(
    tmp_path: Path, origin: Origin, sockets: Path, notify: NotifySocket
) -> None:
    url = origin.url_for("m/model.json")  # nothing there yet: 404
    mirror = file_url(write_model(tmp_path / "usb" / "m", model(9)))
    config = write_config(tmp_path / "conf", {"m": url}, socket=str(sockets / "ctl.sock"),
                          model_keys={"m": {"mirrors": [mirror]}})
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
        svc.start()
        published = svc.wait_event("published", model="m")
        assert published["source"] == mirror
        entry = svc.wait_status(lambda s: s["models"][0]["version"] is not None,
                                "m published")["models"][0]
        assert (entry["version"], entry["source"]) == (published["version"], mirror)
        table = format_status_table(svc.status())
        assert f"mirror: m at {published['version'][:12]} served by {mirror}" in table

        # url serves the same model now: the next check goes there, same version.
        publish_on(origin, "m", model(9))
        cursor = svc.last_event_id()
        svc.client.request("POST", "/v1/models/m/sync")
        checked = svc.wait_event("checked", model="m", since=cursor)
        assert checked["version"] == published["version"]
        entry = svc.model("m")
        assert (entry["version"], entry["source"]) == (published["version"], url)
        assert "mirror:" not in format_status_table(svc.status())
        assert [e for e in svc.events_since(cursor) if e["type"] == "published"] == []
        assert svc.stop() == 0



def test_an_import_reads_its_directory_alone_never_a_mirror(tmp_path: Path,
                                                            origin: Origin) -> None:
    mirror = publish_on(origin, "m", model(2))  # a good mirror, which must not be asked
    config = write_config(tmp_path / "conf", {"m": origin.url_for("gone/model.json")},
                          model_keys={"m": {"mirrors": [mirror]}})
    usb = tmp_path / "usb"
    write_model(usb / "m", model(2))
    (usb / "m" / SHARDS[1]).unlink()  # a broken copy
    origin.reset_counters()
    run = run_cli("import", "-c", config, usb)
    assert run.returncode == 1 and SHARDS[1] in run.stderr, run.stderr
    assert origin.requests() == []
