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
from e2e.browser import Collector, assert_same_load, load_models
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


def _publish_by_hand(origin: Path, manifest: str, site: Path, name: str) -> str:
    """Publish one model into ``site`` the way DESIGN.md lays it out; return its version.

    Stand-in for ``shardsync sync`` until it exists: versions/<v>/ gets the
    manifest byte for byte and the shards (copied), then the entry point with
    its paths rewritten to versions/<v>/ replaces the old one by one rename.
    """
    data = (origin / manifest).read_bytes()
    files = [shard_relpath(p) for g in manifest_groups(json.loads(data)) for p in g["paths"]]
    tree = hashlib.sha256(hashlib.sha256(data).digest())
    for f in files:
        tree.update(f.encode() + b"\0" + hashlib.sha256((origin / f).read_bytes()).digest())
    version = tree.hexdigest()[:16]
    vdir = site / name / "versions" / version
    if not vdir.exists():
        tmp = site / name / "versions" / f".tmp-{version}"
        tmp.mkdir(parents=True)
        shutil.copyfile(origin / manifest, tmp / manifest)
        for f in files:
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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Origin and hand-made mirror behind one nginx (two ports), a collector, one page visit."""
    root = tmp_path_factory.mktemp("e2e")
    origin = _make_origin(root)
    site = root / "site"
    versions = {n: _publish_by_hand(origin, m, site, n) for n, (_, m) in MODELS.items()}
    # The self-check: the same model, one mirror shard corrupted after publishing.
    versions[CORRUPT] = _publish_by_hand(origin, "blazeface.json", site, CORRUPT)
    shard = site / CORRUPT / "versions" / versions[CORRUPT] / "blazeface.bin"
    offset = shard.stat().st_size // 2
    raw = bytearray(shard.read_bytes())
    raw[offset:offset + 4] = bytes(b ^ 0x5A for b in raw[offset:offset + 4])
    shard.write_bytes(raw)

    def conf(mirror_listen: str, origin_listen: str) -> str:
        return (render_nginx_config(site, listen=mirror_listen)
                + render_nginx_config(origin, listen=origin_listen, location="/origin/"))

    with run_nginx(root / "nginx", conf, ports=2) as nginx, Collector() as collector:
        mirror_url, origin_url = nginx.urls
        specs = []
        for name, (kind, manifest) in MODELS.items():
            specs.append({"id": f"origin/{name}", "kind": kind,
                          "url": f"{origin_url}/origin/{manifest}"})
            specs.append({"id": f"mirror/{name}", "kind": kind,
                          "url": f"{mirror_url}/models/{name}/{manifest}"})
        specs.append({"id": f"mirror/{CORRUPT}", "kind": "graph",
                      "url": f"{mirror_url}/models/{CORRUPT}/blazeface.json"})
        loads = load_models(collector, specs, workdir=root / "chromium")
        yield {"origin": origin, "site": site, "versions": versions, "loads": loads,
               "mirror_url": mirror_url, "origin_url": origin_url, "corrupt_offset": offset}


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
