"""The nginx config from shardsync.daemon.nginx, checked against a real nginx.

A hand-made site_dir in docs/design.md's layout is served by nginx running exactly
the text ``render_nginx_config`` returns; every property the kiosk pages rely on
is checked with real HTTP requests. Entry points the store publishes are served the
same way, to check that nginx's validators change with every publish.
"""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.webserver import NginxServer, run_nginx
from storehelpers import ModelFiles, make_model, publish_model, record_model, store_at

from shardsync.daemon.errors import ConfigError
from shardsync.daemon.nginx import render_nginx_config, render_nginx_location
from shardsync.store import Store

IMMUTABLE = "public, max-age=31536000, immutable"
V1 = "v1-0123abcd"
SHARD = b"\x00\x01\x02weights\xff" * 100


def _make_site(root: Path) -> Path:
    """site_dir as docs/design.md lays it out, plus traps a lax server would fall into."""
    site = root / "site"
    vdir = site / "face" / "versions" / V1
    vdir.mkdir(parents=True)
    (vdir / "model.json").write_text('{"weightsManifest": [{"paths": ["group1-shard1of1.bin"]}]}')
    (vdir / "group1-shard1of1.bin").write_bytes(SHARD)
    (vdir / "tiny_face_detector_model-shard1").write_bytes(SHARD)  # face-api: no extension
    (site / "face" / "model.json").write_text(
        f'{{"weightsManifest": [{{"paths": ["versions/{V1}/group1-shard1of1.bin"]}}]}}'
    )
    (site / "shardsync.js").write_text("window.shardsync = {};\n")  # the page script
    (vdir / "labels.js").write_bytes(SHARD)  # a model's file that happens to end in .js
    # An index page anywhere must never be served in place of a missing file.
    (site / "index.html").write_text("<html>index</html>")
    (site / "face" / "index.html").write_text("<html>index</html>")
    # Files the store is still writing are never served.
    (site / "face" / ".tmp-model.json-1-ab").write_text('{"weightsManifest": []}')
    (site / "face" / "versions" / f".tmp-{V1}").mkdir()
    (site / "face" / "versions" / f".tmp-{V1}" / "model.json").write_text("{}")
    (vdir / ".tmp-group1-shard1of1.bin-1-ab").write_bytes(SHARD)
    # Symlinks planted inside site_dir must not be followed.
    secret = root / "secret.txt"
    secret.write_text("outside site_dir")
    (vdir / "link-out.bin").symlink_to(secret)
    (site / "linked-model").symlink_to(site / "face")
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_site(tmp_path_factory.mktemp("nginx-site"))


@pytest.fixture(scope="module")
def base(site: Path, tmp_path_factory: pytest.TempPathFactory):
    # Reach site_dir through a symlinked parent, as an operator may
    # (/srv -> /data/srv): symlinks above site_dir are allowed.
    alias = tmp_path_factory.mktemp("nginx-alias") / "srv"
    alias.symlink_to(site.parent)
    with run_nginx(
        tmp_path_factory.mktemp("nginx-run"),
        lambda listen: render_nginx_config(alias / "site", listen=listen),
    ) as server:
        yield server


def request(server, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    """One real HTTP request; returns (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_entry_manifest_is_json_no_cache_and_has_validators(base, site: Path) -> None:
    status, headers, body = request(base, "/models/face/model.json")
    assert status == 200
    assert body == (site / "face" / "model.json").read_bytes()
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-cache"
    assert headers["etag"] and headers["last-modified"]


# -- entry points the store writes: nginx's validators must follow every publish ----------

def same_size_models() -> tuple[ModelFiles, ModelFiles]:
    """Two releases whose entry points differ only in the version id, so in no size."""
    return (make_model({"group1-shard1of1.bin": b"\x01" * 4096}),
            make_model({"group1-shard1of1.bin": b"\x02" * 4096}))


@pytest.fixture
def store_site(tmp_path: Path) -> Iterator[tuple[Store, Path, NginxServer]]:
    """A Store whose site_dir a real nginx serves exactly as render_nginx_config has it."""
    site = tmp_path / "site"
    with store_at(tmp_path / "state", site) as store, run_nginx(
            tmp_path / "nginx", lambda listen: render_nginx_config(site, listen=listen)) as srv:
        yield store, site, srv


def start_of_a_second() -> None:
    """Sleep into the next second's first 10 ms, so what follows at once (two
    publishes) lies within one second of the clock: without the store's mtime rule
    the two entry points would then share nginx's validators, every time."""
    time.sleep(1.01 - time.time() % 1)


@pytest.mark.parametrize("validator", ["If-None-Match", "If-Modified-Since"])
def test_an_entry_point_replaced_within_the_second_is_not_answered_304(
    store_site: tuple[Store, Path, NginxServer], validator: str
) -> None:
    store, site, server = store_site
    a, b = same_size_models()
    va = record_model(store, "m", a)
    vb = record_model(store, "m", b)
    start_of_a_second()
    store.publish(va)
    status, first, body_a = request(server, "/models/m/model.json")
    store.publish(vb)
    assert status == 200 and body_a == store.entry_bytes(va)
    new = (site / "m" / "model.json").read_bytes()
    assert len(new) == len(body_a) and new != body_a

    header = "etag" if validator == "If-None-Match" else "last-modified"
    status, headers, body = request(server, "/models/m/model.json",
                                    headers={validator: first[header]})
    assert (status, body) == (200, new)
    assert headers[header] != first[header]


@pytest.mark.parametrize("validator", ["If-None-Match", "If-Modified-Since"])
def test_an_unchanged_entry_point_is_answered_304(
    store_site: tuple[Store, Path, NginxServer], validator: str
) -> None:
    store, _, server = store_site
    a, b = same_size_models()
    publish_model(store, "m", a)
    publish_model(store, "m", b)
    status, first, body = request(server, "/models/m/model.json")
    assert status == 200 and body
    header = "etag" if validator == "If-None-Match" else "last-modified"
    status, headers, body = request(server, "/models/m/model.json",
                                    headers={validator: first[header]})
    assert (status, body) == (304, b"")
    assert headers["cache-control"] == "no-cache"


def test_the_page_script_is_javascript_no_cache_and_cross_origin(base, site: Path) -> None:
    status, headers, body = request(base, "/models/shardsync.js")
    assert (status, body) == (200, (site / "shardsync.js").read_bytes())
    assert headers["content-type"] == "text/javascript"
    assert headers["cache-control"] == "no-cache"
    assert headers["access-control-allow-origin"] == "*"
    # Only that file: a .js anywhere else is a model's file, octet-stream like any shard.
    status, headers, body = request(base, f"/models/face/versions/{V1}/labels.js")
    assert (status, headers["content-type"], body) == (200, "application/octet-stream", SHARD)


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        (f"/models/face/versions/{V1}/model.json", "application/json"),
        (f"/models/face/versions/{V1}/group1-shard1of1.bin", "application/octet-stream"),
        (f"/models/face/versions/{V1}/tiny_face_detector_model-shard1", "application/octet-stream"),
    ],
)
def test_versioned_files_are_immutable(base, path: str, ctype: str) -> None:
    status, headers, body = request(base, path)
    assert status == 200
    assert headers["content-type"] == ctype
    assert headers["cache-control"] == IMMUTABLE
    if ctype == "application/octet-stream":
        assert body == SHARD
    status, headers, body = request(base, path, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["cache-control"] == IMMUTABLE


@pytest.mark.parametrize(
    "path",
    [
        f"/models/face/versions/{V1}/group1-shard2of2.bin",  # missing shard
        "/models/face/nope.json",  # missing manifest
        "/models/",  # directories: no index, no listing, no redirect
        "/models/face/",
        "/models/face",
        f"/models/face/versions/{V1}/",
        f"/models/face/versions/{V1}",
        "/index.html",  # outside the location
        "/",
        f"/models/face/versions/{V1}/link-out.bin",  # symlink to a file outside site_dir
        "/models/linked-model/model.json",  # through a symlinked directory
        "/models/face/.tmp-model.json-1-ab",  # the store's temporary names
        f"/models/face/versions/.tmp-{V1}/model.json",
        f"/models/face/versions/{V1}/.tmp-group1-shard1of1.bin-1-ab",
        "/models/face/../../secret.txt",
        "/models/face/%2e%2e/%2e%2e/secret.txt",
    ],
)
def test_real_404(base, path: str) -> None:
    status, headers, body = request(base, path)
    assert status == 404, (path, status, body[:200])
    assert b"index" not in body and b"outside site_dir" not in body
    assert headers.get("cache-control") != IMMUTABLE
    # A page on another origin sees the 404 itself, not an opaque CORS error.
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    "path", ["/models/face/model.json", f"/models/face/versions/{V1}/group1-shard1of1.bin"]
)
def test_cors_and_preflight(base, path: str) -> None:
    status, headers, _ = request(base, path, headers={"Origin": "http://kiosk.example"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    status, headers, body = request(
        base, path, method="OPTIONS",
        headers={
            "Origin": "http://kiosk.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-kiosk-id",
        },
    )
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
    assert headers["access-control-allow-headers"] == "x-kiosk-id"


def test_writes_are_refused(base) -> None:
    status, _, _ = request(base, f"/models/face/versions/{V1}/group1-shard1of1.bin", method="POST")
    assert status == 405


def test_custom_location_and_listen(site: Path, tmp_path: Path) -> None:
    with run_nginx(
        tmp_path, lambda listen: render_nginx_config(site, listen=listen, location="/tf.js/m/")
    ) as server:
        status, headers, body = request(server, f"/tf.js/m/face/versions/{V1}/group1-shard1of1.bin")
        assert (status, body) == (200, SHARD)
        assert headers["cache-control"] == IMMUTABLE
        status, headers, _ = request(server, "/tf.js/m/face/model.json")
        assert (status, headers["cache-control"]) == (200, "no-cache")
        # "." in the location is literal, not a regex wildcard.
        assert request(server, f"/tfXjs/m/face/versions/{V1}/group1-shard1of1.bin")[0] == 404
        assert request(server, "/models/face/model.json")[0] == 404


def test_location_block_is_what_the_server_uses(site: Path) -> None:
    block = render_nginx_location(site, location="/models/")
    assert block.startswith("location /models/ {")
    conf = render_nginx_config(site, listen="127.0.0.1:9")
    assert block in "\n".join(line[4:] for line in conf.splitlines())
    assert f'alias "{site}/";' in block


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"site_dir": '/srv/a";deny all;"'}, "site_dir"),
        ({"site_dir": "/srv/$host"}, "site_dir"),
        ({"site_dir": "/srv/a\nb"}, "site_dir"),
        ({"site_dir": "/srv", "location": "models/"}, "location"),
        ({"site_dir": "/srv", "location": "/models"}, "location"),
        ({"site_dir": "/srv", "location": "/"}, "location"),
        ({"site_dir": "/srv", "location": "/a b/"}, "location"),
        ({"site_dir": "/srv", "listen": "80; include /etc/passwd"}, "listen"),
    ],
)
def test_values_nginx_cannot_hold_are_refused(kwargs: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_nginx_config(**kwargs)
    assert info.value.key == key


def test_relative_site_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert f'alias "{os.path.join(tmp_path, "site")}/";' in render_nginx_location("site")
