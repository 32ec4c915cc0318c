"""Proof with the real client: what shardsync publishes loads in TF.js as the origin's model.

Everything is real. ``shardsync sync`` (the CLI, as a subprocess) mirrors the
sample models from an origin on loopback (``shardsync.daemon.demo.origin``); nginx
serves site_dir with exactly what ``shardsync nginx-config`` prints, and the
origin's files beside it; headless Chromium loads every model from both, on
TF.js's CPU backend, from a page on a third origin (so CORS is exercised too),
and the digests of every weight and of one prediction must be identical.

While a page keeps reloading a model, pausing between its manifest and its
shards, the test changes the origin and syncs a new version in that pause:
every load must still be one version, whole. Also under a service worker that
caches shards by URL.

Two self-checks prove the harness can fail: a corrupted mirror shard, and a
published version whose shard is rewritten in place, must each be reported with
the model and the weight.

The page side: every sample loaded through the site's own ``/models/shardsync.js``
must equal the origin's load, digest for digest, with progress rising to exactly 1
and every shard fetched once; the same page reopened in the same profile with its
nginx stopped must load the same weights from the Cache API and say it is offline
(a fresh profile must not: the self-check); an update published between its
manifest and shards gives one whole version; a version the site dropped leaves
the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e.browser import (
    Collector,
    assert_progress,
    assert_same_load,
    assert_whole_versions,
    load_models,
    read_during_updates,
    run_page,
)
from e2e.webserver import run_nginx
from origin import Origin

from shardsync.daemon.demo.samples import (
    CONVERTER_SHARD_SIZE,
    SampleModel,
    make_big_model,
    write_samples,
)
from shardsync.daemon.nginx import render_nginx_config
from shardsync.daemon.tfjs import parse_manifest

# TF.js loader for each manifest kind (samples.SampleModel.kind).
LOADERS = {"graph-model": "graph", "layers-model": "layers", "weights-manifest": "weights"}

# A layers-model of three 4 MiB Dense kernels, cut by the converter's rule into
# 4 MiB groupN-shardKofM.bin shards (4 of them: the biases spill into a 4th).
BIG_BYTES = 12 << 20

# The model whose mirror copy gets one corrupted shard (synced from blazeface's URL).
CORRUPT = "blazeface-corrupt"

# Models the readers tests publish new versions of (each starts as variant A).
LIVE = ("live", "live-sw", "in-place", "live-pagejs", "evict")

# One sample of each manifest kind (and the one with string weights, whose size
# only its data tell), for the shardsync.js offline test.
OFFLINE_SAMPLES = ("blazeface", "dense-layers", "tiny-face-detector", "string-table")

# Byte of blazeface.bin changed between its two origin states A and B (4-aligned).
VARIANT_OFFSET = 200_000

# Loads per readers run: A, B, A, B, so that a service worker meets each version twice.
READER_LOADS = 4

# Seconds one `shardsync sync` may take: about 1 s here, generous for a loaded machine.
SYNC_TIMEOUT = 120

# The README, whose kiosk page is run as written.
README = Path(__file__).resolve().parent.parent / "README.md"

# Seconds a readers page may take: its loads wait for a sync each (about 5 s in all here).
READERS_TIMEOUT = 180


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the shardsync CLI as a user would, in this interpreter's environment."""
    return subprocess.run(
        [sys.executable, "-m", "shardsync.daemon.cli", *args],
        capture_output=True, text=True, timeout=SYNC_TIMEOUT, check=False,
    )


def _sync(config: Path, *names: str) -> dict[str, dict[str, Any]]:
    """``shardsync sync -c config --json [names]``; every model must succeed."""
    done = _cli("sync", "-c", str(config), "--json", *names)
    assert done.returncode == 0, f"shardsync sync failed ({done.returncode}):\n{done.stderr}"
    results = {m["name"]: m for m in json.loads(done.stdout)["models"]}
    assert all(r["ok"] for r in results.values()), results
    return results


def _make_variants(origin: Path) -> dict[str, Path]:
    """Two states of blazeface, A (as shipped) and B (one weight retrained), under origin/.

    B differs from A in the single weight that holds byte ``VARIANT_OFFSET`` of
    the shard, by its lowest mantissa bit; model.json is byte-identical, as it
    is for real retrained weights.
    """
    dirs = {}
    for variant in ("A", "B"):
        d = origin / "variants" / variant
        shipped = origin / "blazeface"  # as write_samples wrote it
        d.mkdir(parents=True)
        shutil.copyfile(shipped / "blazeface.json", d / "blazeface.json")
        raw = bytearray((shipped / "blazeface.bin").read_bytes())
        if variant == "B":
            raw[VARIANT_OFFSET] ^= 0x01  # little-endian float32: lowest mantissa byte
        (d / "blazeface.bin").write_bytes(raw)
        dirs[variant] = d
    return dirs


def _put_variant(src: Path, dest: Path) -> None:
    """Make the origin serve ``src``'s files at ``dest`` (each file replaced by a rename)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        tmp = dest / f".tmp-{f.name}"
        shutil.copyfile(f, tmp)
        os.replace(tmp, dest / f.name)


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


def _write_config(root: Path, origin: Origin, models: dict[str, str]) -> Path:
    config = root / "shardsync.toml"
    lines = [f'state_dir = "{root / "state"}"', f'site_dir = "{root / "site"}"',
             f'socket = "{root / "control.sock"}"']
    for name, manifest in models.items():
        lines += ["", "[[model]]", f'name = "{name}"', f'url = "{origin.url_for(manifest)}"']
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Origin, a first `shardsync sync`, nginx with `shardsync nginx-config`, a collector."""
    root = tmp_path_factory.mktemp("e2e")
    origin_dir = root / "origin"
    samples: list[SampleModel] = write_samples(origin_dir)
    samples.append(make_big_model(origin_dir, BIG_BYTES, CONVERTER_SHARD_SIZE, name="big-sharded"))
    variants = _make_variants(origin_dir)
    for name in LIVE:
        _put_variant(variants["A"], origin_dir / name)
    models = {s.name: s.manifest for s in samples}
    models[CORRUPT] = models["blazeface"]
    models.update({name: f"{name}/blazeface.json" for name in LIVE})

    with Origin(origin_dir) as origin:
        config = _write_config(root, origin, models)
        synced = _sync(config)
        site = root / "site"

        def conf(mirror_listen: str, origin_listen: str) -> str:
            printed = _cli("nginx-config", "-c", str(config), "--listen", mirror_listen)
            assert printed.returncode == 0, printed.stderr
            # The origin's own files, for the browser's straight-from-origin loads.
            return printed.stdout + render_nginx_config(
                origin_dir, listen=origin_listen, location="/origin/")

        with run_nginx(root / "nginx", conf, ports=2) as nginx, Collector() as collector:
            mirror_url, origin_url = nginx.urls
            yield {"root": root, "origin_dir": origin_dir, "variants": variants, "site": site,
                   "config": config, "samples": samples, "synced": synced,
                   "mirror_url": mirror_url, "origin_url": origin_url, "collector": collector}


@pytest.fixture(scope="module")
def loads(servers: Any) -> dict[str, dict[str, Any]]:
    """Every sample model loaded from the origin and from the mirror, in one page visit."""
    site, synced = servers["site"], servers["synced"]
    # The self-check: one shard of one mirrored copy corrupted after publishing
    # (replaced, not written in place: it is a hardlink to the store's object).
    shard = site / CORRUPT / "versions" / synced[CORRUPT]["version"] / "blazeface.bin"
    raw = bytearray(shard.read_bytes())
    offset = len(raw) // 2
    raw[offset:offset + 4] = bytes(b ^ 0x5A for b in raw[offset:offset + 4])
    tmp = shard.with_name(".tmp-corrupt")
    tmp.write_bytes(raw)
    os.replace(tmp, shard)
    servers["corrupt_offset"] = offset

    specs = []
    for s in servers["samples"]:
        kind = LOADERS[s.kind]
        specs.append({"id": f"origin/{s.name}", "kind": kind,
                      "url": f"{servers['origin_url']}/origin/{s.manifest}"})
        specs.append({"id": f"mirror/{s.name}", "kind": kind,
                      "url": _mirror_url(servers, s.name, s.manifest)})
    specs.append({"id": f"mirror/{CORRUPT}", "kind": "graph",
                  "url": _mirror_url(servers, CORRUPT, "blazeface/blazeface.json")})
    return load_models(servers["collector"], specs, workdir=servers["root"] / "chromium")


def _mirror_url(servers: Any, name: str, manifest: str) -> str:
    """The kiosk's URL of a model: /models/<name>/<manifest file name>."""
    return f"{servers['mirror_url']}/models/{name}/{Path(manifest).name}"


def _sample_names() -> list[str]:
    # The models write_samples writes, plus the 4 MiB-sharded one (see `servers`).
    return ["tiny-face-detector", "face-landmark-68-tiny", "blazeface", "antispoof",
            "blazeface-sharded", "dense-layers", "string-table", "big-sharded"]


def test_every_sample_is_covered(servers: Any) -> None:
    assert sorted(s.name for s in servers["samples"]) == sorted(_sample_names())
    kinds = {s.kind for s in servers["samples"]}
    assert kinds == set(LOADERS), kinds


@pytest.mark.parametrize("name", _sample_names())
def test_mirror_loads_what_the_origin_serves(servers: Any, loads: Any, name: str) -> None:
    sample = next(s for s in servers["samples"] if s.name == name)
    origin, mirror = loads[f"origin/{name}"], loads[f"mirror/{name}"]
    assert_same_load(origin, mirror, model=name)
    # Not vacuous: every weight of the manifest was loaded and digested.
    parsed = parse_manifest((servers["origin_dir"] / sample.manifest).read_bytes(),
                            manifest_url=f"http://o/{sample.manifest}")
    assert set(mirror["weights"]) == {w.name for g in parsed.groups for w in g.weights}
    if sample.kind != "weights-manifest":
        assert mirror["outputs"], f"{name}: no prediction output"
    # Every byte came from the mirror, the shards from the version its entry point names.
    prefix = f"{servers['mirror_url']}/models/{name}/"
    version = servers["synced"][name]["version"]
    shard_urls = [u for u in mirror["fetched"] if u != _mirror_url(servers, name, sample.manifest)]
    assert len(shard_urls) == len(parsed.files), mirror["fetched"]
    assert all(u.startswith(f"{prefix}versions/{version}/") for u in shard_urls), shard_urls


def test_a_corrupted_shard_is_reported_with_model_and_weight(servers: Any, loads: Any) -> None:
    origin, corrupt = loads["origin/blazeface"], loads[f"mirror/{CORRUPT}"]
    assert corrupt["ok"], corrupt.get("error")  # TF.js itself loads it without complaint
    weight = _weight_at(servers["origin_dir"] / "blazeface" / "blazeface.json",
                        servers["corrupt_offset"])
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
            "url": _mirror_url(servers, name, "blazeface.json")}


def _references(servers: Any) -> dict[str, dict[str, str]]:
    """variant -> the origin's copy of that state of the model, for the page to load."""
    return {variant: {"kind": "graph",
                      "url": f"{servers['origin_url']}/origin/variants/{variant}/blazeface.json"}
            for variant in servers["variants"]}


def _key_by_version(report: dict[str, Any], versions: dict[str, str]) -> None:
    """Name each reference load by the version shardsync published for its variant."""
    for ref in report["references"]:
        ref["id"] = versions.get(ref["id"], f"(variant {ref['id']}: never published)")


@pytest.mark.parametrize("name", ["live", "live-sw"])
def test_every_load_during_updates_is_one_version_whole(servers: Any, name: str) -> None:
    config, variants, origin_dir = servers["config"], servers["variants"], servers["origin_dir"]
    versions = {"A": servers["synced"][name]["version"]}

    def gate(body: dict[str, Any]) -> dict[str, str]:
        # The page holds its manifest and waits: the origin changes, shardsync syncs.
        nxt = "B" if body["i"] % 2 == 0 else "A"
        _put_variant(variants[nxt], origin_dir / name)
        version = _sync(config, name)[name]["version"]
        versions.setdefault(nxt, version)
        return {"published": version}

    report = read_during_updates(
        servers["collector"], _live_model(servers, name),
        workdir=servers["root"] / f"chromium-{name}", loads=READER_LOADS, gate=gate,
        references=_references(servers), service_worker=name.endswith("-sw"),
        timeout=READERS_TIMEOUT,
    )
    assert versions["A"] != versions["B"]
    _key_by_version(report, versions)
    assert_whole_versions(report, model=name)
    ld = report["loads"]
    # The race really happened: every load's manifest was replaced before its shards came.
    assert [x["manifestVersions"] for x in ld] == [[versions[v]] for v in "ABAB"], ld
    assert all(x["gate"]["published"] != x["manifestVersions"][0] for x in ld)
    if name.endswith("-sw"):
        assert report["controlled"], "the page was not controlled by sw.js"
        # Loads 2 and 3 got their shards from the worker's cache, by URL.
        assert (report["sw"]["misses"], report["sw"]["hits"]) == (2, 2), report["sw"]


def test_a_version_changed_in_place_is_caught(servers: Any) -> None:
    """Harness self-check: shards that change under a published version are flagged."""
    name = "in-place"
    site, variants = servers["site"], servers["variants"]
    version_a = servers["synced"][name]["version"]

    def gate(body: dict[str, Any]) -> dict[str, str]:
        # What shardsync must never do: change a published version's shard.
        shard = site / name / "versions" / version_a / "blazeface.bin"
        tmp = shard.with_name(".tmp-blazeface.bin")
        shutil.copyfile(variants["B"] / "blazeface.bin", tmp)
        os.replace(tmp, shard)
        return {}

    report = read_during_updates(
        servers["collector"], _live_model(servers, name),
        workdir=servers["root"] / f"chromium-{name}", loads=1, gate=gate,
        references=_references(servers),
    )
    _key_by_version(report, {"A": version_a})
    weight = _weight_at(variants["A"] / "blazeface.json", VARIANT_OFFSET)
    with pytest.raises(AssertionError) as info:
        assert_whole_versions(report, model=name)
    message = str(info.value)
    assert f"model {name}:" in message
    assert f"load 0 (version {version_a}): weights {weight!r} differ" in message, message


# -- the page side: shardsync.js ------------------------------------------------------


def _script_url(servers: Any) -> str:
    """The page script as the site serves it: /models/shardsync.js, from site_dir's root."""
    return f"{servers['mirror_url']}/models/shardsync.js"


def _pagejs_specs(servers: Any, base: str, names: Any) -> list[dict[str, Any]]:
    """load.html specs loading ``names`` through shardsync.js from the site at ``base``."""
    out = []
    for s in servers["samples"]:
        if s.name in names:
            out.append({"id": f"pagejs/{s.name}", "kind": LOADERS[s.kind], "via": "shardsync",
                        "url": f"{base}/models/{s.name}/{Path(s.manifest).name}"})
    return out


@pytest.fixture(scope="module")
def pagejs_loads(servers: Any) -> dict[str, dict[str, Any]]:
    """Every sample loaded with shardsync.js from the mirror, in one page visit."""
    specs = _pagejs_specs(servers, servers["mirror_url"], _sample_names())
    return load_models(servers["collector"], specs, workdir=servers["root"] / "chromium-pagejs",
                       script=_script_url(servers))


def test_the_site_serves_the_packaged_page_script(servers: Any) -> None:
    from shardsync.daemon.pagescript import source

    assert (servers["site"] / "shardsync.js").read_bytes() == source()


@pytest.mark.parametrize("name", _sample_names())
def test_shardsync_js_loads_what_the_origin_serves(
    servers: Any, loads: Any, pagejs_loads: Any, name: str
) -> None:
    sample = next(s for s in servers["samples"] if s.name == name)
    got = pagejs_loads[f"pagejs/{name}"]
    assert_same_load(loads[f"origin/{name}"], got, model=name)
    parsed = parse_manifest((servers["origin_dir"] / sample.manifest).read_bytes(),
                            manifest_url=f"http://o/{sample.manifest}")
    assert set(got["weights"]) == {w.name for g in parsed.groups for w in g.weights}
    assert_progress(got["progress"], model=name)
    if name == "big-sharded":  # 12 MiB in 4 shards: reported as the bytes arrive
        assert len(got["progress"]) > 8, got["progress"]
    version = servers["synced"][name]["version"]
    assert (got["version"], got["offline"], got["format"]) == (version, False, sample.kind)
    assert got["cached"] == [version] and got["fromCache"] == [] and got["cacheError"] is None
    # Nothing downloaded twice: the entry point once, each shard of its version once.
    entry = _mirror_url(servers, name, sample.manifest)
    shard_urls = [u for u in got["fetched"] if u != entry]
    assert got["fetched"].count(entry) == 1, got["fetched"]
    assert sorted(shard_urls) == sorted(
        f"{servers['mirror_url']}/models/{name}/versions/{version}/{f}"
        for f in parsed.files), got["fetched"]


def test_progress_self_check() -> None:
    """Harness self-check: a progress that falls, stops short or repeats 1 is caught."""
    assert_progress([0, 0.5, 1], model="m")
    for bad in ([0, 0.6, 0.5, 1], [0, 0.99], [0, 1, 1], [1], [0, 1.5]):
        with pytest.raises(AssertionError, match="model m: progress"):
            assert_progress(bad, model="m")


def test_shardsync_js_loads_from_its_cache_when_the_server_is_down(
    servers: Any, loads: Any
) -> None:
    """Reopened in the same profile with its web server stopped: the same weights, offline."""
    root, collector = servers["root"], servers["collector"]
    profile = root / "profile-offline"

    def conf(listen: str) -> str:
        printed = _cli("nginx-config", "-c", str(servers["config"]), "--listen", listen)
        assert printed.returncode == 0, printed.stderr
        return printed.stdout

    # A second nginx serving the same site as `shardsync nginx-config` prints it,
    # stopped after the first visit; the script still comes from the first.
    with run_nginx(root / "nginx-offline", conf) as kiosk_server:
        specs = _pagejs_specs(servers, kiosk_server.url, OFFLINE_SAMPLES)
        online = load_models(collector, specs, workdir=root / "chromium-offline",
                             script=_script_url(servers), profile=profile)
    offline = load_models(collector, specs, workdir=root / "chromium-offline",
                          script=_script_url(servers), profile=profile)
    fresh = load_models(collector, specs, workdir=root / "chromium-offline",
                        script=_script_url(servers))
    for name in OFFLINE_SAMPLES:
        before, after = online[f"pagejs/{name}"], offline[f"pagejs/{name}"]
        version = servers["synced"][name]["version"]
        assert (before["ok"], before["offline"], before["version"]) == (True, False, version), (
            before.get("error"))
        assert_same_load(loads[f"origin/{name}"], after, model=name)
        assert (after["offline"], after["version"]) == (True, version)
        assert_progress(after["progress"], model=name)
        # Every shard from the cache, none from the network (there is none).
        assert len(after["fromCache"]) == len(before["fetched"]) - 1, after["fromCache"]
        # Self-check: without the cache the same page cannot load it at all.
        gone = fresh[f"pagejs/{name}"]
        assert not gone["ok"] and "no whole version of it is cached" in gone["error"], gone


def test_an_update_during_a_shardsync_js_load_gives_one_whole_version(servers: Any) -> None:
    name = "live-pagejs"
    config, variants, origin_dir = servers["config"], servers["variants"], servers["origin_dir"]
    versions = {"A": servers["synced"][name]["version"]}

    def gate(body: dict[str, Any]) -> dict[str, str]:
        # shardsync.js has read the entry point and waits: a new version is published.
        nxt = "B" if body["i"] % 2 == 0 else "A"
        _put_variant(variants[nxt], origin_dir / name)
        version = _sync(config, name)[name]["version"]
        versions.setdefault(nxt, version)
        return {"published": version}

    report = read_during_updates(
        servers["collector"], {**_live_model(servers, name), "via": "shardsync"},
        workdir=servers["root"] / f"chromium-{name}", loads=2, gate=gate,
        references=_references(servers), script=_script_url(servers),
        timeout=READERS_TIMEOUT,
    )
    assert versions["A"] != versions["B"]
    _key_by_version(report, versions)
    assert_whole_versions(report, model=name)
    ld = report["loads"]
    assert [x["manifestVersions"] for x in ld] == [[versions["A"]], [versions["B"]]], ld
    assert [x["version"] for x in ld] == [versions["A"], versions["B"]], ld
    assert all(x["gate"]["published"] != x["version"] and not x["offline"] for x in ld), ld


def test_shardsync_js_drops_a_cached_version_the_site_no_longer_keeps(servers: Any) -> None:
    name = "evict"
    site, variants, origin_dir = servers["site"], servers["variants"], servers["origin_dir"]
    version_a = servers["synced"][name]["version"]
    versions: dict[str, str] = {}

    def gate(body: dict[str, Any]) -> dict[str, Any]:
        if body["id"] == "b":  # a new version: A stays on the site, kept for rollback
            _put_variant(variants["B"], origin_dir / name)
            versions["B"] = _sync(servers["config"], name)[name]["version"]
        else:  # as a prune does once A is past keep_versions and the grace period
            shutil.rmtree(site / name / "versions" / version_a)
        return {}

    url = _mirror_url(servers, name, "blazeface.json")
    specs = [{"id": i, "kind": "graph", "url": url, "via": "shardsync", "predict": False,
              "gateBefore": i != "a"} for i in ("a", "b", "b-again")]
    got = load_models(servers["collector"], specs, workdir=servers["root"] / "chromium-evict",
                      script=_script_url(servers), gate=gate)
    a, b, again = got["a"], got["b"], got["b-again"]
    assert all(x["ok"] for x in (a, b, again)), [x.get("error") for x in (a, b, again)]
    version_b = versions["B"]
    assert (a["version"], a["cached"], a["evicted"]) == (version_a, [version_a], [])
    assert (b["version"], b["cached"], b["evicted"]) == (version_b, [version_b, version_a], [])
    assert (again["version"], again["cached"], again["evicted"]) == (
        version_b, [version_b], [version_a])
    # The second load of B downloaded no shard: all came from the cache.
    assert again["fromCache"] and all(f"/versions/{version_b}/" in u for u in again["fromCache"])
    assert [u for u in again["fetched"] if "/versions/" in u and "HEAD" not in u] == [
        f"{servers['mirror_url']}/models/{name}/versions/{version_a}/blazeface.json"]


# Added to the README's kiosk page, which reports to nobody: waits for its status line
# to change from the first text, then reports what the page shows.
_README_REPORTER = """<script src="common.js"></script>
<script>
(async () => {
  const spec = pageSpec();
  reportUncaught(spec);
  const status = document.getElementById('status');
  while (status.textContent === spec.first) await new Promise((r) => setTimeout(r, 50));
  await report(spec, {ok: true, status: status.textContent, model: typeof window.model,
                      bar: Number(document.getElementById('bar').value)});
})();
</script>
"""


def test_the_readme_kiosk_page_loads_its_model_with_a_full_bar(servers: Any) -> None:
    found = re.search(r"```html\n(.*?)```", README.read_text(), re.S)
    assert found, "README has no html block"
    html = found.group(1)
    first = re.search(r'<p id="status">(.*?)</p>', html)
    assert first, "the README's page has no status line"
    # Served by the collector, the page reaches the site on the mirror's origin:
    # only the origin of its URLs changes, and TF.js comes from the collector.
    mirror = servers["mirror_url"]
    page = (html.replace('src="/tf.min.js"', 'src="/tfjs/tf.min.js"')
            .replace("'/models/", f"'{mirror}/models/").replace('"/models/', f'"{mirror}/models/')
            .replace("</body>", _README_REPORTER + "</body>"))
    assert page.count(f"{mirror}/models/") == 2, page  # the script and the model
    servers["collector"].add_page("readme-kiosk.html", page)
    report = run_page(servers["collector"], "readme-kiosk.html", {"first": first.group(1)},
                      workdir=servers["root"] / "chromium-readme")
    version = servers["synced"]["blazeface"]["version"]
    assert (report["status"], report["bar"], report["model"]) == (
        f"version {version}", 1, "object"), report
