"""A shardsync site as an origin (daemon/upstream.py), with real parts only.

An upstream ``shardsync sync`` mirrors the test origin; a real nginx serves its site_dir
exactly as ``shardsync nginx-config`` prints it; a downstream ``shardsync sync`` mirrors
that nginx. nginx's own access log (the ``combined`` format of the throwaway
nginx.conf, outside the server block under test) is the account of every request and
body byte the downstream cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.webserver import NginxServer
from origin import Origin
from sitehelpers import SHARD, hits, model, serve_site, sync
from storehelpers import ModelFiles, tfjs_model, write_model
from synchelpers import assert_published, publish_on, run_cli, write_config


@pytest.fixture
def site(tmp_path: Path) -> Iterator[NginxServer]:
    """nginx serving the upstream's site_dir (``tmp_path/up/site``) as nginx-config has it."""
    with serve_site(tmp_path) as server:
        yield server


def two_releases(origin: Origin, site: NginxServer, up: Path, down: Path
                 ) -> tuple[str, tuple[ModelFiles, str], tuple[ModelFiles, str]]:
    """The upstream publishes ``model()``, the downstream (in ``down``) syncs it from
    ``site``, then the upstream publishes ``model(b"\\x22")``: the downstream's URL,
    and each release's files and upstream version id."""
    v1 = model()
    up_v1 = sync(up, publish_on(origin, "m", v1))
    url = f"{site.url}/models/m/{v1.manifest_name}"
    assert sync(down, url) == up_v1
    v2 = model(b"\x22")
    assert origin.root is not None
    write_model(origin.root / "m", v2)
    return url, (v1, up_v1), (v2, sync(up, origin.url_for(f"m/{v2.manifest_name}")))


def test_a_downstream_publishes_the_upstream_version_and_an_update_moves_one_shard(
    origin: Origin, site: NginxServer, tmp_path: Path
) -> None:
    up, down = tmp_path / "up", tmp_path / "down"
    v1 = model()
    up_v1 = sync(up, publish_on(origin, "m", v1))
    url = f"{site.url}/models/m/{v1.manifest_name}"

    assert sync(down, url) == up_v1
    assert assert_published(down / "site", "m", v1) == up_v1
    assert not (down / "site" / "m" / "versions" / up_v1 / "versions").exists()
    cold = hits(site)
    assert {(h.uri, h.status) for h in cold} == {
        (f"/models/m/{v1.manifest_name}", 200),
        (f"/models/m/versions/{up_v1}/{v1.manifest_name}", 200),
        *((f"/models/m/versions/{up_v1}/{p}", 200) for p in v1.shards)}
    entry = (up / "site" / "m" / v1.manifest_name).stat().st_size  # the rewritten paths
    assert sum(h.body_bytes for h in cold) == entry + len(v1.manifest) + 3 * SHARD

    # A warm check (a new process: the entry point's validators come from the record)
    # is the entry point alone, a 304: the version it pins is one the store holds, so
    # neither its manifest nor a shard is asked for.
    assert sync(down, url) == up_v1
    assert [(h.uri, h.status, h.body_bytes) for h in hits(site)] == [
        (f"/models/m/{v1.manifest_name}", 304, 0)]

    # nginx's ETag is mtime and size, in seconds: a changed shard written within the
    # second of the one it replaces, of the same size, would share it (see the next test).
    time.sleep(1.1)
    v2 = model(b"\x22")
    assert origin.root is not None
    write_model(origin.root / "m", v2)
    up_v2 = sync(up, origin.url_for(f"m/{v2.manifest_name}"))
    assert up_v2 != up_v1
    hits(site)

    assert sync(down, url) == up_v2
    assert assert_published(down / "site", "m", v2) == up_v2
    update = hits(site)
    bodies = {h.uri: h.body_bytes for h in update if h.status == 200}
    entry = (up / "site" / "m" / v2.manifest_name).stat().st_size
    assert bodies == {f"/models/m/{v2.manifest_name}": entry,
                      f"/models/m/versions/{up_v2}/{v2.manifest_name}": len(v2.manifest),
                      f"/models/m/versions/{up_v2}/group1-shard2of3.bin": SHARD}
    assert sorted(h.uri for h in update if h.status == 304) == [
        f"/models/m/versions/{up_v2}/group1-shard1of3.bin",
        f"/models/m/versions/{up_v2}/group1-shard3of3.bin"]


def test_a_304_for_other_bytes_under_a_lent_etag_is_caught_by_the_version_id(
    origin: Origin, site: NginxServer, tmp_path: Path
) -> None:
    """The changed shard's object is given the old one's mtime: same size, same second,
    so nginx answers the lent ETag with a 304 for other bytes. The tree digest differs
    from the pinned id; the downstream asks again without lending, and publishes the
    upstream's version with the right bytes."""
    up, down = tmp_path / "up", tmp_path / "down"
    url, (v1, up_v1), (v2, up_v2) = two_releases(origin, site, up, down)
    old = up / "site" / "m" / "versions" / up_v1 / "group1-shard2of3.bin"
    new = up / "site" / "m" / "versions" / up_v2 / "group1-shard2of3.bin"
    st = old.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    hits(site)

    assert sync(down, url) == up_v2
    assert assert_published(down / "site", "m", v2) == up_v2
    shard2 = [h for h in hits(site) if h.uri.endswith(f"{up_v2}/group1-shard2of3.bin")]
    assert [(h.status, h.body_bytes) for h in shard2] == [(304, 0), (200, SHARD)]


def test_an_origin_whose_paths_only_look_like_a_site_is_a_plain_origin(
    origin: Origin, tmp_path: Path
) -> None:
    """Paths under ``versions/<16 hex>/`` but a pinned manifest that is another model's:
    synced as the manifest it is, its paths nested under the downstream's own version."""
    fake = "0123456789abcdef"
    decoy = tfjs_model("layers-model", [{f"versions/{fake}/group1-shard1of1.bin": b"\x07" * 64}])
    url = publish_on(origin, "m", decoy)
    other = tfjs_model("layers-model", [{"group1-shard1of1.bin": b"\x07" * 64}], tag="other")
    assert origin.root is not None
    write_model(origin.root / "m" / "versions" / fake, other)

    down = tmp_path / "down"
    version = sync(down, url)
    assert assert_published(down / "site", "m", decoy) == version
    assert (down / "site" / "m" / "versions" / version / "versions" / fake).is_dir()


def test_a_version_carried_on_a_usb_stick_costs_the_next_check_of_the_site_its_entry_point(
    origin: Origin, site: NginxServer, tmp_path: Path
) -> None:
    """A kiosk offline for weeks gets the gateway's version from `shardsync export` on a
    stick (`shardsync import`, no network); its next check of the gateway's site asks for
    the entry point alone: the version it pins is the one the store holds."""
    up, down = tmp_path / "up", tmp_path / "down"
    v1 = model()
    up_v1 = sync(up, publish_on(origin, "m", v1))
    stick = tmp_path / "stick"
    done = run_cli("export", "-c", up / "shardsync.toml", stick)
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"{site.url}/models/m/{v1.manifest_name}"
    config = write_config(down, {"m": url})
    done = run_cli("import", "-c", config, stick)
    assert done.returncode == 0, done.stdout + done.stderr
    assert assert_published(down / "site", "m", v1) == up_v1  # the export is upstream's
    hits(site)

    assert sync(down, url) == up_v1
    assert [(h.uri, h.status) for h in hits(site)] == [(f"/models/m/{v1.manifest_name}", 200)]
    assert sync(down, url) == up_v1  # and then its validators: a 304
    assert [(h.uri, h.status) for h in hits(site)] == [(f"/models/m/{v1.manifest_name}", 304)]


def test_an_upstream_rolled_back_to_a_version_the_downstream_keeps_costs_its_entry_point(
    origin: Origin, site: NginxServer, tmp_path: Path
) -> None:
    up, down = tmp_path / "up", tmp_path / "down"
    url, (v1, up_v1), (v2, up_v2) = two_releases(origin, site, up, down)
    assert sync(down, url) == up_v2
    done = run_cli("rollback", "-c", up / "shardsync.toml", "m", up_v1)
    assert done.returncode == 0, done.stdout + done.stderr
    hits(site)

    assert sync(down, url) == up_v1
    assert assert_published(down / "site", "m", v1) == up_v1
    assert [(h.uri, h.status) for h in hits(site)] == [(f"/models/m/{v1.manifest_name}", 200)]
