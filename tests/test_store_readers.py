"""Readers during an update: every load is one whole version, never a mix of two.

A load is what a kiosk page does: read the entry point, pause, then fetch every
shard it names. Every shard of version N is made of the word (N, shard index), so a
reader can tell which version each byte belongs to. Two reader threads load while the
main thread publishes new versions:

* reader A pauses until the next version has been published, so every one of its
  loads straddles an update (deterministically, no timing involved);
* reader B pauses a random 5-20 ms, like a page on a busy kiosk; the next version is
  published only once B has loaded the current one, so B's loads spread over every
  version whatever the machine's speed.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from storehelpers import assert_store_ok, decode_shard, publish_model, store_at, versioned_model

#: Versions published during the test: enough for many loads across many updates.
VERSIONS = 30

#: Upper bound on any one wait between the threads; only reached if something hangs.
WAIT = 10.0


@dataclass
class Reader:
    site: Path
    name: str
    loads: int = 0
    straddled: int = 0  # loads during which the entry point changed
    seen: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_seen(self, number: int) -> bool:
        """Wait until a load of version ``number`` has completed (or a load failed)."""
        with self.cond:
            return self.cond.wait_for(lambda: number in self.seen or self.errors, WAIT)

    def load(self, pause) -> None:
        """One page load; records an error if it is not whole and consistent."""
        entry = (self.site / self.name / "model.json").read_bytes()
        doc = json.loads(entry)  # a torn entry point would not parse
        number = doc["modelTopology"]["tag"]["version"]
        paths = doc["weightsManifest"][0]["paths"]
        want = versioned_model(number, subdir="w")
        pause()
        got = [(self.site / self.name / p).read_bytes() for p in paths]
        # every shard from the manifest's own version, at its exact size
        if [len(b) for b in got] != [len(b) for b in want.shards.values()]:
            self.errors.append(f"load of v{number}: sizes {[len(b) for b in got]}")
        for i, data in enumerate(got):
            if decode_shard(data) != {(number, i)}:
                self.errors.append(f"load of v{number}: shard {i} holds {decode_shard(data)}")
        total = sum(len(b) for b in got)
        want_total = doc["weightsManifest"][0]["weights"][0]["shape"][0] * 4
        if total != want_total:
            self.errors.append(f"load of v{number}: {total} bytes, manifest says {want_total}")
        if (self.site / self.name / "model.json").read_bytes() != entry:
            self.straddled += 1
        with self.cond:
            self.loads += 1
            self.seen.add(number)
            self.cond.notify_all()

    def run(self, stop: threading.Event, pause) -> None:
        try:
            while not stop.is_set():
                self.load(pause)
        except Exception as exc:  # noqa: BLE001 - any failure of a load is the finding
            with self.cond:
                self.errors.append(f"load failed: {exc!r}")
                self.cond.notify_all()


def test_loads_during_updates_are_whole_and_never_mixed(tmp_path: Path) -> None:
    state, site = tmp_path / "state", tmp_path / "site"
    with store_at(state, site, keep_versions=2) as store:  # default grace
        publish_model(store, "m", versioned_model(1, subdir="w"))
        stop = threading.Event()
        a_paused, published = threading.Semaphore(0), threading.Semaphore(0)

        def a_pause() -> None:
            a_paused.release()
            published.acquire(timeout=WAIT)

        rng = random.Random(3)
        a, b = Reader(site, "m"), Reader(site, "m")
        threads = [
            threading.Thread(target=a.run, args=(stop, a_pause)),
            threading.Thread(target=b.run, args=(stop, lambda: stop.wait(rng.uniform(.005, .02)))),
        ]
        for t in threads:
            t.start()
        try:
            assert b.wait_seen(1), b.errors
            for n in range(2, VERSIONS + 1):
                assert a_paused.acquire(timeout=WAIT), a.errors  # A holds a manifest
                publish_model(store, "m", versioned_model(n, subdir="w"))
                published.release()
                assert b.wait_seen(n), b.errors
        finally:
            stop.set()
            published.release()
            for t in threads:
                t.join(timeout=WAIT)
        assert not any(t.is_alive() for t in threads)
        assert a.errors == [] and b.errors == []
        assert a.straddled >= VERSIONS - 1  # every coordinated load spanned an update
        assert a.seen >= set(range(1, VERSIONS))
        assert b.seen == set(range(1, VERSIONS + 1)) and b.loads >= VERSIONS
        assert_store_ok(state, site)


def test_the_reader_detects_a_mixed_load(tmp_path: Path) -> None:
    """The check above can fail: shards of v2 under the paths v1's manifest names."""
    v1, v2 = versioned_model(1, subdir="w"), versioned_model(2, subdir="w")
    entry = json.loads(v1.manifest)
    entry["weightsManifest"][0]["paths"] = [f"versions/x/{p}" for p in v1.shards]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps(entry))
    for (rel, _), data in zip(v1.shards.items(), v2.shards.values(), strict=True):
        (tmp_path / "m" / "versions" / "x" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "m" / "versions" / "x" / rel).write_bytes(data)
    reader = Reader(tmp_path, "m")
    reader.load(lambda: None)
    assert len(reader.errors) == 2 + len(v1.shards)  # sizes, total, every shard's words
