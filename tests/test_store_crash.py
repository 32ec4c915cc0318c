"""Crash consistency: a child process commits and publishes in a loop and is SIGKILLed.

The child does what the daemon does, as fast as it can: puts objects, streams shards
through resumable ingests (resuming what the previous child left), records and
publishes new versions of three models (sometimes under another manifest name),
rolls back to a kept version now and then, prunes and runs gc. The parent kills it at
a random moment, many times; after every kill the store must open, hold only whole
and correct objects, show a complete version for every published model, and carry on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from storehelpers import publish_model, random_model, store_at, store_problems, tmp_leftovers

from shardsync.store import ShardsyncError, Store

#: Runs (kills): the issue asks for at least 50; each costs a child start (~0.1-0.5 s).
RUNS = 50

#: The kill comes this long (at most) after the child reports it is working: most of
#: a child's loop iterations take 5-30 ms, so kills land all over several iterations.
MAX_DELAY = 0.150

_CHILD = r"""
import random, sys
sys.path.insert(0, sys.argv[4])
from storehelpers import make_model, random_model, sha256
from shardsync.store import ShardsyncError, Store
from shardsync.daemon.entrypoint import rewrite_paths

state, site, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
NAMES = ["alpha", "beta", "gamma"]

def blob(etag):
    r = random.Random(etag)
    return r.randbytes(4 * r.randint(1, 96 * 1024))

def ingest(store, url):
    ing = store.open_ingest(url)
    if ing.offset and ing.etag and ing.offset <= len(blob(ing.etag)):
        etag, offset = ing.etag, ing.offset          # resume what a killed child left
    else:
        etag, offset = str(rng.getrandbits(64)), 0
    data = blob(etag)
    ing.start(etag=etag, last_modified=None, expected_size=len(data), offset=offset)
    for pos in range(offset, len(data), 32 * 1024):
        ing.write(data[pos:pos + 32 * 1024])
        if rng.random() < 0.2:
            ing.checkpoint()
    assert ing.commit(len(data), sha256(data)) == sha256(data)
    return data

with Store(state, site, keep_versions=2, grace=0, entry_point=rewrite_paths) as store:
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        name = rng.choice(NAMES)
        kept = [v for v in store.kept(name) if v != store.versions.current(name)]
        if kept and rng.random() < 0.15:
            store.publish(store.versions.get(name, kept[0]))   # a rollback
            continue
        shards = {}
        for k in range(rng.randint(2, 4)):
            rel = f"{rng.choice(['', 'w/'])}group1-shard{k + 1}.bin"
            if rng.random() < 0.5:
                shards[rel] = ingest(store, f"https://origin.test/{name}/{k}")
            else:
                shards[rel] = rng.randbytes(4 * rng.randint(1, 64 * 1024))
                assert store.put_bytes(shards[rel]) == sha256(shards[rel])
        if rng.random() < 0.3:   # a dedupe: reuse another model's current shard
            other = store.current(rng.choice(NAMES))
            if other is not None and other.files:
                f = other.files[0]
                with store.objects.open(f.digest) as fh:
                    shards["shared.bin"] = fh.read()
        manifest_name = "model.json" if rng.random() < 0.8 else "weights_manifest.json"
        model = make_model(shards, manifest_name=manifest_name, tag=[seed, i])
        store.put_bytes(model.manifest)
        version = store.record(name, *model.entries())
        store.publish(version)
        if i % 7 == 0:
            store.gc()
"""


def _after_kill(store: Store, state: Path, site: Path) -> list[str]:
    """What is wrong with a store just reopened after a kill (empty: nothing)."""
    found = store_problems(state, site)
    for p in tmp_leftovers(state, site):
        where = os.path.dirname(os.path.relpath(p, state.parent))
        found.append(f"temporary left after reopening, in {where}")
    for name in store.versions.names():
        cur = store.current(name)
        if cur is not None and (site / name / cur.manifest.path).exists():
            if (site / name / cur.manifest.path).read_bytes() != store.entry_bytes(cur):
                found.append(f"{name}: entry point is not the current version's")
    return found


def test_sigkill_at_random_points_leaves_a_consistent_store(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    helpers = str(Path(__file__).parent)
    rng = random.Random(20240611)
    seen_versions: set[tuple[str, str]] = set()
    ours: set[tuple[str, str]] = set()
    # problem -> (first run it was seen after, how many runs saw it); collected over all
    # runs so that one failure lists every kind of damage, not only the first
    problems: dict[str, list[int]] = {}
    for run in range(RUNS):
        child = subprocess.Popen(
            [sys.executable, str(script), str(state), str(site), str(run), helpers],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert child.stdout is not None and child.stderr is not None
        try:
            line = child.stdout.readline()
            assert line == "ready\n", child.stderr.read()
            time.sleep(rng.uniform(0, MAX_DELAY))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            err = child.stderr.read()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, f"run {run}: child failed:\n{err}"

        with store_at(state, site, keep_versions=2, grace=0) as store:  # must open
            found = _after_kill(store, state, site)
            for name in store.versions.names():
                cur = store.current(name)
                if cur is not None:
                    seen_versions.add((name, cur.id))
            # the store carries on: one more publish succeeds
            model = random_model(random.Random(10_000 + run), shards=2, subdir="w")
            name = rng.choice(["alpha", "beta", "gamma"])
            try:
                ours.add((name, publish_model(store, name, model).id))
            except ShardsyncError as exc:
                found.append(f"publish after reopening failed: {exc!r}")
        for p in dict.fromkeys(found):
            problems.setdefault(p, [run, 0])[1] += 1
    assert not problems, "\n".join(
        f"{p}  (first after run {first}, seen after {n} runs)"
        for p, (first, n) in problems.items())
    # the kills landed while the child was making progress, not only at its start (how
    # many runs got that far depends on the machine's load, so only "some" is asserted)
    assert seen_versions - ours
