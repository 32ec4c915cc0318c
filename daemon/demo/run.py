"""`shardsync demo`: the whole path on built-in sample models, with no network.

It starts a local origin (:mod:`.origin`) on 127.0.0.1 serving the bundled models
(real face-api and Human models, one re-cut into converter-style shards, a
generated layers-model, and a generated model in 4 MiB ``groupN-shardKofM.bin``
shards), writes a config for them in a directory, and then shows what a device
sees: a cold sync, a warm re-check that costs no body bytes, a retrained shard
under an unchanged ``model.json`` becoming a new version, and a verify.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import trio

from shardsync.store import Store

from ..config import load_config
from ..oneshot import open_store, sync_models
from ..progress import result_line
from ..sync import SyncResult
from ..units import format_bytes
from .origin import Origin
from .recut import recut
from .samples import CONVERTER_SHARD_SIZE, make_big_model, write_samples

__all__ = ["run_demo"]

#: Size of the generated multi-shard model: three 4 MiB converter shards, enough to
#: show sharding and progress, small enough to run in a second.
BIG_MODEL_BYTES = 12 * 1024 * 1024


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(directory: Path | None = None) -> int:
    """Run the demo in ``directory`` (a new temp dir if None); return the exit status."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="shardsync-demo-"))
    directory = directory.resolve()
    origin_dir = directory / "origin"
    origin_dir.mkdir(parents=True, exist_ok=True)
    samples = write_samples(origin_dir)
    samples.append(make_big_model(origin_dir, BIG_MODEL_BYTES, CONVERTER_SHARD_SIZE,
                                  name="dense-4mib"))
    # A real model re-cut into 4 MiB converter shards (it fits in one: group1-shard1of1.bin).
    recut(origin_dir / "antispoof", "antispoof.json", CONVERTER_SHARD_SIZE)

    logging.getLogger("shardsync.daemon.sync").setLevel(logging.WARNING)  # we report ourselves

    with Origin(origin_dir) as origin:
        config_path = directory / "shardsync.toml"
        lines = ['state_dir = "state"', 'site_dir = "site"', 'socket = "control.sock"',
                 'interval = "30m"', "concurrency = 4", "keep_versions = 2", ""]
        for s in samples:
            lines += ["[[model]]", f'name = "{s.name}"', f'url = "{origin.url_for(s.manifest)}"',
                      ""]
        config_path.write_text("\n".join(lines))
        config = load_config(config_path)
        _say(f"shardsync demo in {directory}")
        _say(f"  origin  {origin.url}  (serving {origin_dir})")
        _say(f"  config  {config_path}")
        _say()

        with open_store(config) as store:
            names = [m.name for m in config.models]
            tty = sys.stderr.isatty()

            _say("1. Cold sync: every model is downloaded, verified and published.")
            results = trio.run(sync_models, config, store, names, tty)
            _report(results)
            cold = origin.bytes_sent()

            _say("2. Warm check: every file is asked about with a conditional request.")
            origin.reset_counters()
            results = trio.run(sync_models, config, store, names)
            _report(results)
            _say(f"   body bytes sent by the origin: {origin.bytes_sent()} (cold: "
                 f"{format_bytes(cold)})")
            _say()

            shard = "dense-4mib/" + json.loads(
                (origin_dir / "dense-4mib/model.json").read_bytes())["weightsManifest"][0][
                "paths"][1]
            _say(f"3. A retrained shard under an unchanged model.json ({shard}).")
            data = bytearray((origin_dir / shard).read_bytes())
            data[:4] = bytes(4)  # one weight becomes 0.0: same size, different bytes
            origin.set_file(shard, bytes(data))
            origin.reset_counters()
            results = trio.run(sync_models, config, store, ["dense-4mib"])
            _report(results)
            _say(f"   body bytes sent: {format_bytes(origin.bytes_sent())} (only the "
                 f"changed shard)")
            _say(f"   versions kept: {', '.join(store.site.version_ids('dense-4mib'))}")
            _say()

            _say("4. Verify: re-hash every object and check every published file.")
            problems = store.verify()
            _say(f"   {len(problems)} problem(s)")
            for p in problems:
                _say(f"   {p}")
            ok = all(r.ok for r in results) and not problems
            _summary(store, config.site_dir)
    return 0 if ok else 1


def _report(results: list[SyncResult]) -> None:
    for r in results:
        _say("   " + result_line(r))
    _say()


def _summary(store: Store, site_dir: Path) -> None:
    _say()
    _say(f"Published in {site_dir}:")
    for name in store.site.models():
        version = store.current(name)
        if version is not None:
            _say(f"  {name}/{version.manifest.path}  -> versions/{version.id}/ "
                 f"({len(version.files)} shard(s), {format_bytes(version.size)})")
    _say()
    _say("Serve it and load a model from a page:")
    _say(f"  python3 -m http.server --directory {site_dir} 8080")
    _say("  tf.loadGraphModel('http://127.0.0.1:8080/blazeface/blazeface.json')")
    _say("For nginx (real 404s, cache headers, CORS): shardsync nginx-config -c "
         f"{site_dir.parent / 'shardsync.toml'}")
