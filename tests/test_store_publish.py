"""Publishing: the docs/design.md site layout, hardlinks, pruning with a grace period, recovery.

Time-dependent pruning is driven through the ``now=`` parameters, never by sleeping.
The cross-filesystem case mounts a real tmpfs as site_dir (tests run as root).
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from storehelpers import (
    ModelFiles,
    assert_store_ok,
    make_model,
    mounted_tmpfs,
    object_path,
    publish_model,
    random_model,
    record_model,
    sha256,
    store_at,
    tmp_leftovers,
    tree_snapshot,
    versioned_model,
)

from shardsync.store import (
    FileEntry,
    NotFoundError,
    ShardsyncError,
    StorageError,
    Store,
    Version,
)


def entry_doc(site: Path, name: str, manifest_name: str = "model.json"):
    return json.loads((site / name / manifest_name).read_bytes())


def expected_entry(model: ModelFiles, version_id: str):
    """The manifest as JSON with every group's paths under versions/<id>/."""
    doc = json.loads(model.manifest)
    groups = doc if isinstance(doc, list) else doc["weightsManifest"]
    for g in groups:
        g["paths"] = [f"versions/{version_id}/{p}" for p in g["paths"]]
    return doc


def version_dirs(site: Path, name: str) -> set[str]:
    d = site / name / "versions"
    return set(os.listdir(d)) if d.exists() else set()


def records(state: Path, name: str) -> set[str]:
    d = state / "snapshots" / name
    return {p.stem for p in d.glob("*.json")} if d.exists() else set()


def test_layout_matches_design(store: Store, dirs) -> None:
    state, site = dirs
    model = random_model(random.Random(1), shards=4, subdir="weights/deep")
    version = publish_model(store, "bodypix", model)
    vdir = site / "bodypix" / "versions" / version.id
    # the origin's manifest byte for byte, and every shard at its relative path
    assert (vdir / "model.json").read_bytes() == model.manifest
    for rel, data in model.shards.items():
        assert (vdir / rel).read_bytes() == data
    listed = sorted(str(p.relative_to(vdir)) for p in vdir.rglob("*") if p.is_file())
    assert listed == sorted([*model.shards, "model.json"])
    # the entry point: the manifest with only its paths rewritten
    assert entry_doc(site, "bodypix") == expected_entry(model, version.id)
    assert stat.S_IMODE((site / "bodypix" / "model.json").stat().st_mode) == 0o644
    assert sorted(os.listdir(site / "bodypix")) == ["model.json", "versions"]
    # the state side: record, ref, and the id is the short tree digest
    assert (state / "refs" / "bodypix").read_text().strip() == version.id
    rec = json.loads((state / "snapshots" / "bodypix" / f"{version.id}.json").read_bytes())
    assert rec["manifest"]["digest"] == sha256(model.manifest)
    assert {f["path"]: (f["digest"], f["size"]) for f in rec["files"]} == {
        p: (sha256(b), len(b)) for p, b in model.shards.items()}
    assert len(version.id) == 16 and version.tree.startswith(version.id)
    assert store.current("bodypix") == version
    assert_store_ok(state, site)


def test_bare_weights_manifest_is_rewritten(store: Store, dirs) -> None:
    model = make_model({"tiny_face_detector_model.bin": os.urandom(4000)}, bare=True,
                       manifest_name="tiny_face_detector_model-weights_manifest.json")
    version = publish_model(store, "face", model)
    got = entry_doc(dirs[1], "face", model.manifest_name)
    assert isinstance(got, list)
    assert got == expected_entry(model, version.id)
    assert_store_ok(*dirs)


def test_version_id_depends_on_content_not_on_validators(store: Store) -> None:
    model = random_model(random.Random(2))
    man, files = model.entries()
    v1 = Version.build("m", man, files)
    with_meta = [FileEntry(f.path, f.digest, f.size, {"etag": '"x"'}) for f in files]
    assert Version.build("m", man, with_meta).id == v1.id
    assert Version.build("m", man, list(reversed(files))).id == v1.id
    changed = [files[0], FileEntry(files[1].path, sha256(b"other"), 5), *files[2:]]
    assert Version.build("m", man, changed).id != v1.id
    renamed = [FileEntry("renamed.bin", files[0].digest, files[0].size), *files[1:]]
    assert Version.build("m", man, renamed).id != v1.id


def test_published_files_are_hardlinks_of_objects(store: Store, dirs) -> None:
    state, site = dirs
    model = random_model(random.Random(3), shards=3, subdir="w")
    version = publish_model(store, "m", model)
    vdir = site / "m" / "versions" / version.id
    for rel, data in [*model.shards.items(), ("model.json", model.manifest)]:
        pub, obj = os.stat(vdir / rel), os.stat(object_path(state, sha256(data)))
        assert (pub.st_dev, pub.st_ino) == (obj.st_dev, obj.st_ino)
        assert stat.S_IMODE(pub.st_mode) == 0o444
    assert store.site.copies == 0


def test_keep_versions_and_grace(dirs) -> None:
    """keep_versions=1, grace=300 s: the current one plus any that stopped < 300 s ago."""
    state, site = dirs
    with store_at(state, site, keep_versions=1, grace=300) as store:
        v: dict[int, str] = {}

        def publish(i: int, now: float) -> None:
            v[i] = publish_model(store, "m", versioned_model(i), now=now).id

        publish(1, 1000)
        assert version_dirs(site, "m") == {v[1]}
        publish(2, 2000)  # v1 stopped being current just now: kept
        assert version_dirs(site, "m") == {v[1], v[2]}
        publish(3, 2200)  # v1 stopped 200 s ago: still kept
        assert version_dirs(site, "m") == {v[1], v[2], v[3]}
        publish(4, 2301)  # v1 stopped 301 s ago: gone, with its record
        assert version_dirs(site, "m") == {v[2], v[3], v[4]}
        assert records(state, "m") == {v[2], v[3], v[4]}
        publish(5, 9000)  # only the current one and the one replaced now
        assert version_dirs(site, "m") == {v[4], v[5]}
        assert records(state, "m") == {v[4], v[5]}
        assert store.kept("m", now=9000 + 301) == [v[5]]
        assert store.prune("m", now=9000 + 301) == [v[4]]
        assert version_dirs(site, "m") == records(state, "m") == {v[5]}
        assert entry_doc(site, "m") == expected_entry(versioned_model(5), v[5])
        assert_store_ok(state, site)


def test_keep_versions_two_without_grace(dirs) -> None:
    state, site = dirs
    with store_at(state, site, keep_versions=2, grace=0) as store:
        ids = [publish_model(store, "m", versioned_model(i), now=1000.0 * i).id
               for i in range(1, 5)]
        assert version_dirs(site, "m") == records(state, "m") == {ids[3], ids[2]}
        assert store.kept("m", now=10_000) == [ids[3], ids[2]]


def test_current_version_is_never_pruned(dirs) -> None:
    """Even with the clock gone backwards, the version just published stays."""
    state, site = dirs
    with store_at(state, site, keep_versions=1, grace=0) as store:
        publish_model(store, "m", versioned_model(1), now=5000)
        v2 = publish_model(store, "m", versioned_model(2), now=1000)
        assert v2.id in version_dirs(site, "m")
        assert v2.id not in store.prune("m", now=10**9)
        assert v2.id in version_dirs(site, "m") and v2.id in records(state, "m")
        assert store.current("m") == v2
        assert_store_ok(state, site)


def test_rollback_to_a_kept_version(dirs) -> None:
    state, site = dirs
    with store_at(state, site, keep_versions=2, grace=0) as store:
        v1 = publish_model(store, "m", versioned_model(1), now=1000)
        publish_model(store, "m", versioned_model(2), now=2000)
        store.publish(v1, now=3000)
        assert entry_doc(site, "m") == expected_entry(versioned_model(1), v1.id)
        assert store.current("m") == v1
        assert_store_ok(state, site)


def test_republishing_the_current_version_changes_nothing(store: Store, dirs) -> None:
    model = random_model(random.Random(4))
    v = publish_model(store, "m", model)
    before = tree_snapshot(dirs[1])
    store.publish(v)
    assert tree_snapshot(dirs[1]) == before


def test_changed_manifest_name_removes_old_entry_point(store: Store, dirs) -> None:
    site = dirs[1]
    publish_model(store, "m", versioned_model(1, manifest_name="model.json"))
    v2 = publish_model(store, "m", versioned_model(2, manifest_name="model-v2.json"))
    assert not (site / "m" / "model.json").exists()
    assert entry_doc(site, "m", "model-v2.json") == expected_entry(
        versioned_model(2, manifest_name="model-v2.json"), v2.id)
    assert_store_ok(*dirs)


def test_missing_object_fails_and_previous_stays_published(store: Store, dirs) -> None:
    state, site = dirs
    v1 = publish_model(store, "m", versioned_model(1))
    before_site, before_refs = tree_snapshot(site), tree_snapshot(state / "refs")
    model2 = versioned_model(2)
    man, files = model2.entries()
    store.put_bytes(model2.manifest)
    for data in list(model2.shards.values())[:-1]:  # the last shard is never stored
        store.put_bytes(data)
    v2 = Version.build("m", man, files)
    with pytest.raises(NotFoundError) as exc:
        store.publish(v2)
    assert exc.value.model == "m" and exc.value.file == files[-1].path
    assert exc.value.expected == files[-1].digest
    assert tree_snapshot(site) == before_site
    assert tree_snapshot(state / "refs") == before_refs
    assert store.current("m") == v1
    with pytest.raises(NotFoundError):
        store.record("m", man, files)
    assert_store_ok(state, site)


def test_recover_writes_the_entry_point_after_a_crash_before_it(dirs) -> None:
    """Crash between the ref update and the entry-point rename, simulated by hand."""
    state, site = dirs
    with store_at(state, site) as store:
        publish_model(store, "m", versioned_model(1))
        v2 = record_model(store, "m", versioned_model(2))
        store.versions.set_current("m", v2.id)  # ref and history say v2; site still v1
    assert entry_doc(site, "m") != expected_entry(versioned_model(2), v2.id)
    with store_at(state, site) as store:
        assert entry_doc(site, "m") == expected_entry(versioned_model(2), v2.id)
        assert store.current("m") == v2
    assert_store_ok(state, site)


def test_recover_after_a_crash_with_a_renamed_manifest(dirs) -> None:
    """As above, but the new version's manifest has another name: the old entry goes."""
    state, site = dirs
    new = versioned_model(2, manifest_name="model-v2.json")
    with store_at(state, site) as store:
        publish_model(store, "m", versioned_model(1))
        v2 = record_model(store, "m", new)
        store.versions.set_current("m", v2.id)
    with store_at(state, site):
        assert entry_doc(site, "m", "model-v2.json") == expected_entry(new, v2.id)
        assert not (site / "m" / "model.json").exists()
    assert_store_ok(state, site)


def test_half_removed_version_is_complete_when_published_again(dirs) -> None:
    """A prune killed half-way through removing a version, then that version returns.

    Prune removes the directory first and the record second; a kill in the middle of
    the directory's removal leaves the record and a directory with some files gone.
    Publishing that version again (the origin reverted its weights) must give a
    complete version, not an entry point naming files that are gone.
    """
    state, site = dirs
    with store_at(state, site, keep_versions=2, grace=0) as store:
        v1 = publish_model(store, "m", versioned_model(1), now=1000)
        publish_model(store, "m", versioned_model(2), now=2000)
        vdir = site / "m" / "versions" / v1.id
        victim = sorted(versioned_model(1).shards)[0]
        (vdir / victim).unlink()  # what rmtree had done when the kill came
        store.publish(v1, now=3000)
    assert_store_ok(state, site)


def test_remove_model(store: Store, dirs) -> None:
    state, site = dirs
    publish_model(store, "m", versioned_model(1))
    publish_model(store, "other", versioned_model(1, subdir="x"))
    store.remove_model("m")
    assert not (site / "m").exists()
    assert store.current("m") is None and records(state, "m") == set()
    assert store.versions.names() == ["other"]
    assert_store_ok(state, site)


@pytest.fixture
def tmpfs_site(tmp_path: Path) -> Iterator[Path]:
    """A real second filesystem (tmpfs) mounted as site_dir; unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "site-tmpfs", "64m") as mnt:
        yield mnt


def test_cross_filesystem_publish_falls_back_to_copies(tmp_path: Path, tmpfs_site: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert os.stat(state).st_dev != os.stat(tmpfs_site).st_dev
    with store_at(state, tmpfs_site) as store:
        model = random_model(random.Random(5), shards=3, subdir="w")
        version = publish_model(store, "m", model)
        n_files = 1 + len(model.shards)
        assert store.site.copies == n_files
        vdir = tmpfs_site / "m" / "versions" / version.id
        for rel, data in [*model.shards.items(), ("model.json", model.manifest)]:
            pub, obj = os.stat(vdir / rel), os.stat(object_path(state, sha256(data)))
            assert pub.st_ino != obj.st_ino and pub.st_nlink == 1 and obj.st_nlink == 1
            assert (vdir / rel).read_bytes() == data
            assert stat.S_IMODE(pub.st_mode) == 0o444
        assert entry_doc(tmpfs_site, "m") == expected_entry(model, version.id)
        assert store.verify() == []
        # a second version copies only its own files, and the old one stays intact
        v2 = publish_model(store, "m", versioned_model(9, subdir="w"))
        assert store.site.copies == n_files + 1 + 3
        assert store.current("m") == v2
        assert store.verify() == []
    assert_store_ok(state, tmpfs_site)


def _fill_up(fs: Path) -> None:
    """Write to ``fs`` until it is full (ENOSPC), as another tenant of the disk would."""
    with open(fs / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_build_that_fails_leaves_no_temporary_tree(tmp_path: Path) -> None:
    """ENOSPC while copying into a small site filesystem: the failed build's
    ``.tmp-`` tree is removed at once (clean_tmp spares our own pid's temporaries,
    so without that every retry of the running service would leave one more)."""
    state = tmp_path / "state"
    with mounted_tmpfs(tmp_path / "site", "1m") as site, store_at(state, site) as store:
        model = make_model({f"s{i}.bin": os.urandom(512 * 1024) for i in range(3)})
        version = record_model(store, "m", model)
        for _ in range(3):
            with pytest.raises(StorageError) as info:
                store.publish(version)
            assert isinstance(info.value.__cause__, OSError)
            assert info.value.__cause__.errno == errno.ENOSPC
            assert tmp_leftovers(site) == []
        assert store.current("m") is None
        assert not (site / "m" / "versions" / version.id).exists()


def test_a_repair_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    """verify --repair puts a published file back under a temporary name; ENOSPC
    there must not leave the temporary behind."""
    state = tmp_path / "state"
    with mounted_tmpfs(tmp_path / "site", "2m") as site, store_at(state, site) as store:
        model = make_model({f"s{i}.bin": os.urandom(256 * 1024) for i in range(3)})
        version = publish_model(store, "m", model)
        (site / "m" / "versions" / version.id / "s1.bin").unlink()
        _fill_up(site)
        with pytest.raises(StorageError) as info:
            store.verify(repair=True)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
        assert tmp_leftovers(site) == []
        (site / "filler").unlink()
        store.verify(repair=True)
        assert store.verify() == []
        assert tmp_leftovers(site) == []


# -- files at the site's root (the daemon's page script) -----------------------------------


def test_put_site_file_writes_0644_atomically_and_only_when_the_bytes_differ(
    store: Store, dirs
) -> None:
    site = dirs[1]
    os.umask(0o077)  # the file must stay readable by the web server whatever the umask
    try:
        assert store.put_site_file("page.js", b"one") is True
    finally:
        os.umask(0o022)
    path = site / "page.js"
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o644
    ino = path.stat().st_ino
    assert store.put_site_file("page.js", b"one") is False  # unchanged: left alone
    assert path.stat().st_ino == ino
    assert store.put_site_file("page.js", b"two") is True  # replaced by a rename
    assert path.read_bytes() == b"two" and path.stat().st_ino != ino
    path.chmod(0o600)
    assert store.put_site_file("page.js", b"two") is True  # a narrowed mode is put back
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert tmp_leftovers(site) == []


def test_put_site_file_replaces_a_symlink_and_never_follows_it(
    store: Store, dirs, tmp_path: Path
) -> None:
    site = dirs[1]
    outside = tmp_path / "outside.js"
    outside.write_bytes(b"not ours")
    (site / "page.js").symlink_to(outside)
    assert store.put_site_file("page.js", b"ours") is True
    assert outside.read_bytes() == b"not ours"
    assert not (site / "page.js").is_symlink() and (site / "page.js").read_bytes() == b"ours"


def test_put_site_file_refuses_a_directory_in_the_way_and_a_bad_name(store: Store) -> None:
    publish_model(store, "taken", make_model({"a.bin": b"x" * 8}))
    with pytest.raises(StorageError):
        store.put_site_file("taken", b"x")
    for bad in ("../up.js", "a/b.js", "..", "Page.js", ".tmp-page.js"):
        with pytest.raises(ShardsyncError):
            store.put_site_file(bad, b"x")


# -- the entry point's mtime: what a web server's validators are made of -------------------

def same_size_models() -> tuple[ModelFiles, ModelFiles]:
    """Two models with the same manifest and shards of one size: their entry points
    differ only in the version id in their paths, so they have one size too."""
    return (make_model({"group1-shard1of1.bin": b"\x01" * 4096}),
            make_model({"group1-shard1of1.bin": b"\x02" * 4096}))


def mtime_s(path: Path) -> int:
    """The mtime in whole seconds: what nginx's ETag and Last-Modified are made of."""
    return path.lstat().st_mtime_ns // 1_000_000_000


def test_every_new_entry_point_is_a_whole_second_newer_than_the_one_it_replaces(
    dirs,
) -> None:
    """Publish, publish, rollback, unpin, pin: five entry points of one size written
    well within a second, each with an mtime second of its own."""
    state, site = dirs
    a, b = same_size_models()
    entry = site / "m" / "model.json"
    with store_at(state, site, keep_versions=2) as store:
        seen = []
        va = publish_model(store, "m", a)
        seen.append((mtime_s(entry), entry.read_bytes()))
        vb = publish_model(store, "m", b)
        seen.append((mtime_s(entry), entry.read_bytes()))
        store.rollback("m")  # to a, pinned
        seen.append((mtime_s(entry), entry.read_bytes()))
        assert store.publish(vb) is False  # held back by the pin
        store.unpin("m")  # publishes b
        seen.append((mtime_s(entry), entry.read_bytes()))
        store.pin("m", va.id)
        seen.append((mtime_s(entry), entry.read_bytes()))
        assert store.current("m") == va
        assert [data for _, data in seen] == [store.entry_bytes(v)
                                              for v in (va, vb, va, vb, va)]
    assert len({len(data) for _, data in seen}) == 1
    stamps = [s for s, _ in seen]
    assert stamps == sorted(set(stamps)), stamps  # strictly increasing
    assert_store_ok(state, site)


def test_a_clock_that_went_back_still_moves_the_entry_point_forward(
    store: Store, dirs
) -> None:
    """A kiosk without RTC switched on with yesterday's time: the entry point written
    "today" has a later mtime, so the new one must be later still, not "now"."""
    site = dirs[1]
    a, b = same_size_models()
    publish_model(store, "m", a)
    entry = site / "m" / "model.json"
    ahead = time.time_ns() + 86400 * 1_000_000_000 + 123_456_789
    os.utime(entry, ns=(ahead, ahead))
    publish_model(store, "m", b)
    assert mtime_s(entry) == ahead // 1_000_000_000 + 1
    # A previous entry point that is a symlink is none: its target's mtime is not read,
    # and the link is replaced, not followed.
    target = site.parent / "elsewhere.json"
    target.write_bytes(b"{}")
    os.utime(target, ns=(ahead, ahead))
    entry.unlink()
    entry.symlink_to(target)
    before = time.time_ns() // 1_000_000_000
    publish_model(store, "m", a)
    assert not entry.is_symlink() and entry.read_bytes() != b"{}"
    assert before <= mtime_s(entry) <= time.time_ns() // 1_000_000_000
    assert (target.read_bytes(), target.stat().st_mtime_ns) == (b"{}", ahead)


def test_a_site_file_replaced_within_the_second_gets_a_newer_mtime_second(
    store: Store, dirs
) -> None:
    """The page script is served no-cache with nginx's validators, like entry points:
    bytes of one size replaced within a second (or after the clock went back) must not
    keep the old mtime second."""
    path = dirs[1] / "page.js"
    store.put_site_file("page.js", b"one")
    ahead = time.time_ns() + 3600 * 1_000_000_000
    os.utime(path, ns=(ahead, ahead))
    store.put_site_file("page.js", b"two")
    assert mtime_s(path) == ahead // 1_000_000_000 + 1
    store.put_site_file("page.js", b"one")
    assert mtime_s(path) == ahead // 1_000_000_000 + 2
