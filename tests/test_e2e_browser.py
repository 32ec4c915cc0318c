"""TF.js in headless Chromium loads the mirror exactly as it loads the origin.

For now the mirror is published *by hand* in DESIGN.md's layout (the
``_publish_by_hand`` helper below); once ``shardsync sync`` exists, it replaces
that helper and these tests keep their shape. Everything else is real: nginx
serves origin and mirror with the configuration ``shardsync nginx-config``
prints, Chromium loads from a page on a third origin (so CORS is exercised), and
the harness proves it can tell a corrupted shard from a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from e2e.browser import (
    Collector,
    assert_same_load,
    assert_whole_versions,
    load_models,
    read_during_updates,
)
from e2e.webserver import run_nginx

from shardsync.daemon.nginx import render_nginx_config
from shardsync.daemon.tfjs import parse_manifest
from shardsync.store.entry import manifest_groups, rewrite_paths, shard_relpath

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a fresh clone has shared/ beside it
    FIXTURES = Path("/work/shared/fixtures")


# name -> (kind, manifest file in the origin dir)
MODELS = {
    "blazeface": ("graph", "blazeface.json"),  # float32/int32 graph model
    "antispoof": ("graph", "antispoof.json"),  # float16-quantized graph model
    "tiny-face": ("weights", "tiny_face_detector_model-weights_manifest.json"),  # uint8, bare
}
# The model whose mirror copy gets one corrupted shard (published under this name).
CORRUPT = "blazeface-corrupt"
# Byte of blazeface.bin changed between its two origin states A and B (4-aligned).
VARIANT_OFFSET = 200_000
# Loads per readers run: A, B, A, B, so that a service worker meets each version twice.
READER_LOADS = 4


def _make_origin(root: Path) -> Path:
    """The origin's files: fixture models, face-api's shard renamed to have no extension."""
    origin = root / "origin"
    origin.mkdir()
    for f in ("blazeface.json", "blazeface.bin", "antispoof.json", "antispoof.bin"):
        shutil.copyfile(FIXTURES / "human" / f, origin / f)
    manifest = json.loads(
        (FIXTURES / "face-api" / "tiny_face_detector_model-weights_manifest.json").read_bytes()
    )
    manifest[0]["paths"] = ["tiny_face_detector_model-shard1"]
    (origin / MODELS["tiny-face"][1]).write_text(json.dumps(manifest))
    shutil.copyfile(FIXTURES / "face-api" / "tiny_face_detector_model.bin",
                    origin / "tiny_face_detector_model-shard1")
    return origin


def _tree_version(origin: Path, manifest: str) -> str:
    """A version name for the model files in ``origin``: a tree digest, as DESIGN.md says."""
    data = (origin / manifest).read_bytes()
    tree = hashlib.sha256(hashlib.sha256(data).digest())
    for f in _shard_files(data):
        tree.update(f.encode() + b"\0" + hashlib.sha256((origin / f).read_bytes()).digest())
    return tree.hexdigest()[:16]


def _shard_files(manifest_data: bytes) -> list[str]:
    groups = manifest_groups(json.loads(manifest_data))
    return [shard_relpath(p) for g in groups for p in g["paths"]]


def _publish_by_hand(origin: Path, manifest: str, site: Path, name: str) -> str:
    """Publish one model into ``site`` the way DESIGN.md lays it out; return its version.

    Stand-in for ``shardsync sync`` until it exists: versions/<v>/ gets the
    manifest byte for byte and the shards (copied), then the entry point with
    its paths rewritten to versions/<v>/ replaces the old one by one rename.
    """
    data = (origin / manifest).read_bytes()
    version = _tree_version(origin, manifest)
    vdir = site / name / "versions" / version
    if not vdir.exists():
        tmp = site / name / "versions" / f".tmp-{version}"
        tmp.mkdir(parents=True)
        shutil.copyfile(origin / manifest, tmp / manifest)
        for f in _shard_files(data):
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin / f, tmp / f)
        os.rename(tmp, vdir)
    entry_tmp = site / name / f".tmp-{manifest}"
    entry_tmp.write_bytes(rewrite_paths(data, f"versions/{version}/"))
    os.replace(entry_tmp, site / name / manifest)
    return version


def _weight_at(manifest: Path, offset: int) -> str:
    """The name of the weight whose bytes hold ``offset`` in the first group's shards."""
    parsed = parse_manifest(manifest.read_bytes(), manifest_url=f"http://o/{manifest.name}")
    pos = 0
    for w in parsed.groups[0].weights:
        assert w.nbytes is not None
        if pos <= offset < pos + w.nbytes:
            return w.name
        pos += w.nbytes
    raise AssertionError(f"offset {offset} is past the weights of {manifest}")


def _make_variants(origin: Path) -> dict[str, Path]:
    """Two states of blazeface at the origin, A (as shipped) and B (one weight retrained).

    Returns variant -> directory; B differs from A in the single weight that
    holds byte ``VARIANT_OFFSET`` of the shard, by its lowest mantissa bit.
    """
    dirs = {}
    for variant in ("A", "B"):
        d = origin / "variants" / variant
        d.mkdir(parents=True)
        shutil.copyfile(FIXTURES / "human" / "blazeface.json", d / "blazeface.json")
        raw = bytearray((FIXTURES / "human" / "blazeface.bin").read_bytes())
        if variant == "B":
            raw[VARIANT_OFFSET] ^= 0x01  # little-endian float32: lowest mantissa byte
        (d / "blazeface.bin").write_bytes(raw)
        dirs[variant] = d
    return dirs


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Origin and site dirs behind one nginx (two ports, shardsync's config), and a collector."""
    root = tmp_path_factory.mktemp("e2e")
    origin = _make_origin(root)
    variants = _make_variants(origin)
    site = root / "site"
    site.mkdir()

    def conf(mirror_listen: str, origin_listen: str) -> str:
        return (render_nginx_config(site, listen=mirror_listen)
                + render_nginx_config(origin, listen=origin_listen, location="/origin/"))

    with run_nginx(root / "nginx", conf, ports=2) as nginx, Collector() as collector:
        mirror_url, origin_url = nginx.urls
        yield {"root": root, "origin": origin, "variants": variants, "site": site,
               "mirror_url": mirror_url, "origin_url": origin_url, "collector": collector}


@pytest.fixture(scope="module")
def world(servers: Any) -> Any:
    """Every model of MODELS published by hand and loaded from origin and mirror, one visit."""
    origin, site = servers["origin"], servers["site"]
    mirror_url, origin_url = servers["mirror_url"], servers["origin_url"]
    versions = {n: _publish_by_hand(origin, m, site, n) for n, (_, m) in MODELS.items()}
    # The self-check: the same model, one mirror shard corrupted after publishing.
    versions[CORRUPT] = _publish_by_hand(origin, "blazeface.json", site, CORRUPT)
    shard = site / CORRUPT / "versions" / versions[CORRUPT] / "blazeface.bin"
    offset = shard.stat().st_size // 2
    raw = bytearray(shard.read_bytes())
    raw[offset:offset + 4] = bytes(b ^ 0x5A for b in raw[offset:offset + 4])
    shard.write_bytes(raw)

    specs = []
    for name, (kind, manifest) in MODELS.items():
        specs.append({"id": f"origin/{name}", "kind": kind,
                      "url": f"{origin_url}/origin/{manifest}"})
        specs.append({"id": f"mirror/{name}", "kind": kind,
                      "url": f"{mirror_url}/models/{name}/{manifest}"})
    specs.append({"id": f"mirror/{CORRUPT}", "kind": "graph",
                  "url": f"{mirror_url}/models/{CORRUPT}/blazeface.json"})
    loads = load_models(servers["collector"], specs, workdir=servers["root"] / "chromium")
    return {**servers, "versions": versions, "loads": loads, "corrupt_offset": offset}


@pytest.mark.parametrize("name", list(MODELS))
def test_mirror_loads_what_the_origin_serves(world: Any, name: str) -> None:
    kind, manifest = MODELS[name]
    origin, mirror = world["loads"][f"origin/{name}"], world["loads"][f"mirror/{name}"]
    assert_same_load(origin, mirror, model=name)
    # Not vacuous: every weight of the manifest was loaded and digested.
    parsed = parse_manifest((world["origin"] / manifest).read_bytes(),
                            manifest_url=f"http://o/{manifest}")
    names = {w.name for g in parsed.groups for w in g.weights}
    assert set(mirror["weights"]) == names
    if kind == "graph":
        assert mirror["outputs"], f"{name}: no prediction output"
    # The mirror's shards came from the mirror, from the version its entry point names.
    prefix = f"{world['mirror_url']}/models/{name}/"
    shard_urls = [u for u in mirror["fetched"] if not u.endswith(".json")]
    assert shard_urls and all(
        u.startswith(f"{prefix}versions/{world['versions'][name]}/") for u in shard_urls
    ), mirror["fetched"]
    assert all(u.startswith(prefix) for u in mirror["fetched"]), mirror["fetched"]


def test_a_corrupted_shard_is_reported_with_model_and_weight(world: Any) -> None:
    origin, corrupt = world["loads"]["origin/blazeface"], world["loads"][f"mirror/{CORRUPT}"]
    assert corrupt["ok"], corrupt.get("error")  # TF.js itself loads it without complaint
    weight = _weight_at(world["origin"] / "blazeface.json", world["corrupt_offset"])
    with pytest.raises(AssertionError) as info:
        assert_same_load(origin, corrupt, model=CORRUPT)
    message = str(info.value)
    assert f"model {CORRUPT}:" in message
    assert f"weight {weight!r}" in message
    assert "prediction output" in message
    # Only that weight differs: the shard's other bytes are intact.
    assert message.count("weight '") == 1, message


def _live_model(servers: Any, name: str) -> dict[str, str]:
    return {"id": name, "kind": "graph",
            "url": f"{servers['mirror_url']}/models/{name}/blazeface.json"}


def _reference(servers: Any, variant: str) -> dict[str, str]:
    return {"kind": "graph",
            "url": f"{servers['origin_url']}/origin/variants/{variant}/blazeface.json"}


@pytest.mark.parametrize("service_worker", [False, True], ids=["plain", "service-worker"])
def test_every_load_during_updates_is_one_version_whole(servers: Any, service_worker: bool) -> None:
    name = "live-sw" if service_worker else "live"
    site, variants = servers["site"], servers["variants"]
    version = {v: _tree_version(d, "blazeface.json") for v, d in variants.items()}
    assert version["A"] != version["B"]
    _publish_by_hand(variants["A"], "blazeface.json", site, name)

    def gate(body: dict[str, Any]) -> dict[str, str]:
        # The page holds its manifest and waits for us: switch to the other version.
        nxt = "B" if body["i"] % 2 == 0 else "A"
        return {"published": _publish_by_hand(variants[nxt], "blazeface.json", site, name)}

    report = read_during_updates(
        servers["collector"],
        _live_model(servers, name),
        workdir=servers["root"] / f"chromium-{name}",
        loads=READER_LOADS,
        gate=gate,
        references={version[v]: _reference(servers, v) for v in variants},
        service_worker=service_worker,
    )
    assert_whole_versions(report, model=name)
    loads = report["loads"]
    # The race really happened: every load's manifest was replaced before its shards came.
    assert [ld["manifestVersions"] for ld in loads] == [
        [version["A"]], [version["B"]], [version["A"]], [version["B"]]
    ]
    assert all(ld["gate"]["published"] != ld["manifestVersions"][0] for ld in loads)
    if service_worker:
        assert report["controlled"], "the page was not controlled by sw.js"
        # Loads 2 and 3 got their shards from the worker's cache, by URL.
        assert (report["sw"]["misses"], report["sw"]["hits"]) == (2, 2), report["sw"]


def test_a_version_changed_in_place_is_caught(servers: Any) -> None:
    """Harness self-check: shards that change under a published version are flagged."""
    name = "in-place"
    site, variants = servers["site"], servers["variants"]
    version_a = _publish_by_hand(variants["A"], "blazeface.json", site, name)

    def gate(body: dict[str, Any]) -> dict[str, str]:
        # What shardsync must never do: rewrite a published version's shard.
        shard = site / name / "versions" / version_a / "blazeface.bin"
        tmp = shard.with_name(".tmp-blazeface.bin")
        shutil.copyfile(variants["B"] / "blazeface.bin", tmp)
        os.replace(tmp, shard)
        return {}

    report = read_during_updates(
        servers["collector"],
        _live_model(servers, name),
        workdir=servers["root"] / f"chromium-{name}",
        loads=1,
        gate=gate,
        references={version_a: _reference(servers, "A")},
    )
    weight = _weight_at(variants["A"] / "blazeface.json", VARIANT_OFFSET)
    with pytest.raises(AssertionError) as info:
        assert_whole_versions(report, model=name)
    message = str(info.value)
    assert f"model {name}:" in message
    assert f"load 0 (version {version_a}): weights {weight!r} differ" in message, message
