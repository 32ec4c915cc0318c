"""gc frees exactly what no kept version references; verify finds damage and says where.

Damage is done the way it happens in the field: a flipped byte inside an object
(bit rot; objects are 0444, so the test chmods first), and a published file replaced
by an editor or a deploy script that unlinks the hardlink and writes a new file.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from storehelpers import (
    assert_store_ok,
    flip_byte,
    make_model,
    object_files,
    object_path,
    publish_model,
    record_model,
    sha256,
    store_at,
    versioned_model,
)
from synchelpers import run_cli, write_config

from shardsync.store import LockedError, Problem, Store


@pytest.fixture
def store(dirs: tuple[Path, Path]) -> Iterator[Store]:
    """This file's store keeps one version and no grace: pruning shows at once."""
    with store_at(*dirs, keep_versions=1, grace=0) as s:
        yield s


def objects_on_disk(state: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in object_files(state)}


def model_with_common(i: int, common: bytes):
    """Version ``i`` of a model: one shard shared by every version, one of its own."""
    rng = random.Random(i)
    return make_model({"group1-shard1of2.bin": common,
                       "group1-shard2of2.bin": rng.randbytes(4 * rng.randint(100, 3000))},
                      tag=i)


def test_gc_keeps_what_kept_versions_reference_and_frees_the_rest(store: Store, dirs) -> None:
    state, site = dirs
    common = os.urandom(8000)
    models = [model_with_common(i, common) for i in range(1, 4)]
    for i, m in enumerate(models, 1):
        publish_model(store, "m", m, now=1000.0 * i)  # keep 1, grace 0: v1 and v2 pruned
    other = publish_model(store, "other", versioned_model(1))
    stray = os.urandom(1234)
    store.put_bytes(stray)  # put, never recorded
    pending = record_model(store, "pending", versioned_model(7))  # recorded, not published

    kept = {sha256(models[2].manifest), sha256(common),
            sha256(models[2].shards["group1-shard2of2.bin"])}
    kept |= other.digests | pending.digests
    freed = {sha256(m.manifest) for m in models[:2]}
    freed |= {sha256(m.shards["group1-shard2of2.bin"]) for m in models[:2]}
    freed.add(sha256(stray))
    on_disk = objects_on_disk(state)
    assert set(on_disk) == kept | freed
    want_bytes = sum(on_disk[d] for d in freed)

    dry = store.gc(dry_run=True)
    assert set(dry.removed) == freed
    assert (dry.objects_removed, dry.bytes_freed, dry.objects_kept) == (
        len(freed), want_bytes, len(kept))
    assert objects_on_disk(state) == on_disk  # a dry run removes nothing

    report = store.gc()
    assert set(report.removed) == freed
    assert (report.objects_removed, report.bytes_freed, report.objects_kept) == (
        len(freed), want_bytes, len(kept))
    assert set(objects_on_disk(state)) == kept
    assert_store_ok(state, site)
    store.publish(pending)  # what gc kept is enough to publish the pending version
    assert store.verify() == []
    assert_store_ok(state, site)
    again = store.gc()
    assert (again.objects_removed, again.bytes_freed) == (0, 0)


def test_gc_min_age_keeps_unreferenced_objects_written_recently(store: Store, dirs) -> None:
    """What a sync that failed part-way leaves: objects stored, no version naming them.
    The service's gc keeps them for a while so the next attempt need not fetch them."""
    state, _ = dirs
    v = publish_model(store, "m", versioned_model(1))
    old, young = os.urandom(1000), os.urandom(2000)
    for data in (old, young):
        store.put_bytes(data)
    two_days_ago = time.time() - 2 * 86400
    os.utime(object_path(state, sha256(old)), (two_days_ago, two_days_ago))

    dry = store.gc(dry_run=True, min_age=86400)
    assert dry.removed == [sha256(old)]
    assert dry.objects_kept == len(v.digests) + 1
    report = store.gc(min_age=86400)
    assert (report.removed, report.bytes_freed) == ([sha256(old)], 1000)
    assert report.objects_kept == len(v.digests) + 1
    assert set(objects_on_disk(state)) == v.digests | {sha256(young)}
    # without min_age (the CLI's default) the young orphan goes too
    assert store.gc().removed == [sha256(young)]
    assert set(objects_on_disk(state)) == v.digests
    with pytest.raises(ValueError):
        store.gc(min_age=-1)


def test_gc_removes_orphaned_partial_files_only(store: Store, dirs) -> None:
    partial = dirs[0] / "partial"
    with store.open_ingest("https://example.com/resumable.bin") as ing:
        ing.start(etag="e", last_modified=None, expected_size=None)
        ing.write(b"x" * 5000)
    kept = sorted(os.listdir(partial))
    (partial / "0123456789abcdef0123456789abcdef.data").write_bytes(b"orphan data")
    (partial / "fedcba9876543210fedcba9876543210.json").write_bytes(b"{}")
    dry = store.gc(dry_run=True)
    assert dry.partials_removed == 2 and len(os.listdir(partial)) == 4
    assert store.gc().partials_removed == 2
    assert sorted(os.listdir(partial)) == kept
    with store.open_ingest("https://example.com/resumable.bin") as ing:
        assert ing.offset == 5000


_HOLDER = """
import sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
with Store(sys.argv[1], sys.argv[2], entry_point=rewrite_paths):
    print("open", flush=True)
    sys.stdin.read()
"""


def test_gc_while_another_process_holds_the_store_is_locked(store: Store, dirs) -> None:
    stray = store.put_bytes(os.urandom(100))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(dirs[0]), str(dirs[1])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(LockedError):
            store.gc()
        with pytest.raises(LockedError):
            store.gc(dry_run=True)
        assert object_path(dirs[0], stray).exists()
        publish_model(store, "m", versioned_model(1))  # the store still works meanwhile
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert holder.returncode == 0
    assert store.gc().removed == [stray]
    assert_store_ok(*dirs)




def _replace_behind_the_back(path: Path) -> bytes:
    """What an editor or `cp` over the file does: a new inode, same size, other bytes."""
    size = path.stat().st_size
    path.unlink()
    new = os.urandom(size)
    path.write_bytes(new)
    return new


def _key(p: Problem) -> tuple[str, str | None, str | None, str | None]:
    return p.kind, p.model, p.version, p.path


def _damaged_store(store: Store, dirs):
    """Two models; a flipped byte in a shard object of ``m``, a replaced file of ``n``."""
    state, site = dirs
    vm = publish_model(store, "m", versioned_model(1))
    vn = publish_model(store, "n", versioned_model(2, subdir="w"))
    rot_rel, rot_data = sorted(versioned_model(1).shards.items())[1]
    flip_byte(object_path(state, sha256(rot_data)), 100)
    rep_rel, rep_data = sorted(versioned_model(2, subdir="w").shards.items())[0]
    rep_path = site / "n" / "versions" / vn.id / rep_rel
    _replace_behind_the_back(rep_path)
    return vm, vn, (rot_rel, rot_data), (rep_rel, rep_data, rep_path)


def test_verify_reports_a_flipped_byte_and_a_replaced_file_precisely(store: Store, dirs) -> None:
    """The rotten object is reported by digest; the version needing it, and its published
    file (a hardlink sharing the rotten bytes), by model, version and path."""
    vm, vn, (rot_rel, rot_data), (rep_rel, rep_data, rep_path) = _damaged_store(store, dirs)
    problems = store.verify()
    assert sorted(map(_key, problems), key=str) == sorted([
        ("object-corrupt", None, None, sha256(rot_data)),
        ("object-missing", "m", vm.id, rot_rel),
        ("file-differs", "m", vm.id, rot_rel),
        ("file-differs", "n", vn.id, rep_rel),
    ], key=str)
    by_key = {(p.kind, p.model): p for p in problems}
    assert sha256(rot_data) in str(by_key[("object-corrupt", None)])
    assert sha256(rep_data) in str(by_key[("file-differs", "n")])  # says what it should be
    assert not any(p.repaired for p in problems)
    assert store.verify() == problems  # verify alone changes nothing


def test_verify_repair_restores_the_file_and_deletes_the_corrupt_object(
    store: Store, dirs
) -> None:
    state, site = dirs
    vm, vn, (rot_rel, rot_data), (rep_rel, rep_data, rep_path) = _damaged_store(store, dirs)
    problems = store.verify(repair=True)
    fixed = {_key(p): p.repaired for p in problems}
    assert fixed[("file-differs", "n", vn.id, rep_rel)] is True
    assert not object_path(state, sha256(rot_data)).exists()
    assert rep_path.read_bytes() == rep_data
    obj = object_path(state, sha256(rep_data))
    assert os.stat(rep_path).st_ino == os.stat(obj).st_ino  # the object again, hardlinked
    # what is left is the missing object (and the file it was published as, now gone);
    # a sync stores the object again, then all is well
    left = {_key(p) for p in store.verify()}
    assert ("object-missing", "m", vm.id, rot_rel) in left
    assert left <= {("object-missing", "m", vm.id, rot_rel), ("file-missing", "m", vm.id, rot_rel)}
    store.put_bytes(rot_data)
    store.verify(repair=True)
    assert store.verify() == []
    assert_store_ok(state, site)


def test_repair_leaves_no_known_corrupt_bytes_published(store: Store, dirs) -> None:
    """The corrupt object is hardlinked into site_dir: deleting the object alone leaves
    the rotten bytes served under the current version's URL."""
    state, site = dirs
    vm, _, (rot_rel, rot_data), _ = _damaged_store(store, dirs)
    store.verify(repair=True)
    published = site / "m" / "versions" / vm.id / rot_rel
    assert not published.exists() or published.read_bytes() == rot_data
    # and once the object is stored again, publishing the version serves good bytes
    store.put_bytes(rot_data)
    store.publish(vm)
    assert published.read_bytes() == rot_data


def test_verify_finds_a_missing_file_and_a_changed_entry_point(store: Store, dirs) -> None:
    state, site = dirs
    model = versioned_model(3, subdir="w")
    v = publish_model(store, "m", model)
    rel = sorted(model.shards)[2]
    (site / "m" / "versions" / v.id / rel).unlink()
    problems = store.verify()
    assert [_key(p) for p in problems] == [("file-missing", "m", v.id, rel)]
    store.verify(repair=True)
    assert (site / "m" / "versions" / v.id / rel).read_bytes() == model.shards[rel]

    entry = site / "m" / "model.json"
    good = entry.read_bytes()
    entry.write_bytes(good.replace(v.id.encode(), b"0" * 16))
    assert [_key(p) for p in store.verify()] == [("entry-differs", "m", v.id, "model.json")]
    [p] = store.verify(repair=True)
    assert p.repaired and entry.read_bytes() == good
    assert store.verify() == []
    assert_store_ok(state, site)


def test_verify_does_not_report_a_recorded_but_unpublished_version(store: Store, dirs) -> None:
    """A version recorded and not (yet) published, e.g. a crash between record and
    publish, has no published files to check: nothing is missing, and repair must not
    build its directory file by file outside the atomic build."""
    state, site = dirs
    publish_model(store, "m", versioned_model(1))
    pending = record_model(store, "m", versioned_model(2))
    assert store.verify() == []
    assert store.verify(repair=True) == []
    assert not (site / "m" / "versions" / pending.id).exists()


def test_repair_reports_the_corrupt_object_it_deleted_as_repaired(tmp_path: Path) -> None:
    """A corrupt orphan (no version needs it) is fully dealt with by deleting it: the
    store says repaired, so `shardsync verify --repair` has nothing left and exits 0."""
    conf = tmp_path / "conf"
    # never contacted: the model is published below, and nothing of it needs fetching
    config = write_config(conf, {"m": "http://127.0.0.1:9/m/model.json"})
    state, site = conf / "state", conf / "site"
    with store_at(state, site) as store:
        publish_model(store, "m", versioned_model(1))
        orphan = os.urandom(3000)
        store.put_bytes(orphan)
    flip_byte(object_path(state, sha256(orphan)), 10)

    run = run_cli("verify", "-c", config, "--repair", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert [(p["kind"], p["path"], p["repaired"]) for p in doc["problems"]] == [
        ("object-corrupt", sha256(orphan), True)]
    assert not object_path(state, sha256(orphan)).exists()
    with store_at(state, site) as store:
        assert store.verify() == []
        flip_byte(object_path(state, sha256(versioned_model(1).manifest)), 10)
        [corrupt] = [p for p in store.verify() if p.kind == "object-corrupt"]
        assert corrupt.repaired is False  # verify alone repairs nothing


def test_problem_reads_as_one_line() -> None:
    p = Problem("file-differs", "content hashes to 00", model="m", version="v", path="a.bin")
    assert str(p) == "file-differs: model m version v file a.bin: content hashes to 00"
