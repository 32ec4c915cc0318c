"""Path safety: hostile relative paths are refused before anything is written, and a
symlink planted inside state_dir or site_dir is never followed outward.

Every refusal is checked twice: the error, and a snapshot of the directories (and of
the outside target) showing that nothing was written.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from storehelpers import (
    assert_store_ok,
    object_path,
    publish_model,
    random_model,
    record_model,
    run_script,
    sha256,
    store_at,
    tree_snapshot,
    versioned_model,
)

from shardsync.store import FileEntry, ShardsyncError, Store, UnsafePathError, Version
from shardsync.store._paths import check_name, check_relpath, open_dir, open_dir_at

UNSAFE = [
    "", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b",
    "/abs", "/", "//server/share",
    "a\\b", "..\\x", "a\0b", "a\nb", "a\n", "a\x7fb", "a\ud800.bin", "\udfff",
    "a//b", "a/", "/a/",
    "http://evil.example/x.bin", "file:///etc/passwd", "C:\\x", "c:x", "data:,x",
    ".tmp-x", "a/.tmp-y",
    "a" * 256, "d/" + "é" * 128 + "/x.bin",  # over the 255 bytes a file name may have
]

SAFE = [
    "model.json", "group1-shard1of2.bin", "group1-shard1of2", "a/b/c.bin", "a.b", "..a",
    "a..", "weights/..bin", "x-y_z.0", "модель.bin", "a b.bin", "versions/x.bin",
    "a" * 255, "d/" + "é" * 125 + ".bin",
]


@pytest.mark.parametrize("path", UNSAFE)
def test_check_relpath_refuses(path: str) -> None:
    with pytest.raises(UnsafePathError) as exc:
        check_relpath(path)
    assert repr(path) in str(exc.value)


@pytest.mark.parametrize("path", SAFE)
def test_check_relpath_accepts(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize("name", ["bodypix-resnet50", "a", "a.b_c-9", "face.api"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", "A", "a/b", "a b", "a\0", "a\n", "../x", "ä", "a\\b",
])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(UnsafePathError):
        check_name(name)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside state_dir and site_dir that must stay untouched."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_bytes(b"do not touch\n")
    return d


@pytest.mark.parametrize("path", UNSAFE)
def test_version_build_and_record_refuse_unsafe_paths(store: Store, dirs, path: str) -> None:
    data = b"shard bytes!"
    store.put_bytes(data)
    man = FileEntry("model.json", store.put_bytes(b"[]"), 2)
    before = (tree_snapshot(dirs[0]), tree_snapshot(dirs[1]))
    bad = FileEntry(path, sha256(data), len(data))
    with pytest.raises(UnsafePathError):
        Version.build("m", man, [bad])
    with pytest.raises(UnsafePathError):
        store.record("m", man, [bad])
    with pytest.raises(UnsafePathError):
        store.record("m", FileEntry(path, sha256(data), len(data)), [])
    assert (tree_snapshot(dirs[0]), tree_snapshot(dirs[1])) == before


@pytest.mark.parametrize("name", ["../up", "A", "a/b", ""])
def test_record_refuses_unsafe_model_names(store: Store, dirs, name: str) -> None:
    model = random_model(random.Random(1))
    for data in (model.manifest, *model.shards.values()):
        store.put_bytes(data)
    before = (tree_snapshot(dirs[0]), tree_snapshot(dirs[1]))
    with pytest.raises(UnsafePathError):
        store.record(name, *model.entries())
    assert (tree_snapshot(dirs[0]), tree_snapshot(dirs[1])) == before


def test_manifest_with_hostile_paths_is_not_published(store: Store, dirs, outside) -> None:
    """The file list is safe but the manifest's own paths climb out: no entry point."""
    shard = os.urandom(16)
    hostile = (b'{"modelTopology": {}, "weightsManifest": [{"paths": ["../../outside/x.bin"],'
               b' "weights": [{"name": "w", "shape": [4], "dtype": "float32"}]}]}')
    man = FileEntry("model.json", store.put_bytes(hostile), len(hostile))
    version = store.record("m", man, [FileEntry("x.bin", store.put_bytes(shard), 16)])
    before_site, before_out = tree_snapshot(dirs[1]), tree_snapshot(outside)
    with pytest.raises(UnsafePathError):
        store.publish(version)
    assert tree_snapshot(dirs[1]) == before_site
    assert tree_snapshot(outside) == before_out
    assert store.current("m") is None


def test_open_dir_at_never_follows_a_symlink(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to(outside)
    (root / "file").write_bytes(b"")
    fd = open_dir(root)
    try:
        os.close(open_dir_at(fd, "real"))
        for rel in ("link", "link/sub", "real/../link", "file", "file/sub"):
            with pytest.raises(UnsafePathError):
                open_dir_at(fd, rel, create=True)
        os.close(open_dir_at(fd, "real/a/b", create=True))
        assert (root / "real" / "a" / "b").is_dir()
        with pytest.raises(FileNotFoundError):
            open_dir_at(fd, "missing")
    finally:
        os.close(fd)
    assert tree_snapshot(outside) == {"precious.txt": ("file", 0o644, b"do not touch\n")}


@pytest.mark.parametrize("plant", ["model", "versions"])
def test_symlink_in_site_dir_is_not_followed(store: Store, dirs, outside, plant) -> None:
    site = dirs[1]
    if plant == "model":
        (site / "m").symlink_to(outside, target_is_directory=True)
    else:
        (site / "m").mkdir()
        (site / "m" / "versions").symlink_to(outside, target_is_directory=True)
    before = tree_snapshot(outside)
    version = record_model(store, "m", versioned_model(1))
    with pytest.raises(UnsafePathError):
        store.publish(version)
    assert tree_snapshot(outside) == before
    assert store.current("m") is None


def test_symlink_planted_as_a_version_directory_is_not_published(
    store: Store, dirs, outside
) -> None:
    """``site/<name>/versions/<id>`` made a symlink before the version is built."""
    site = dirs[1]
    version = record_model(store, "m", versioned_model(1))
    (site / "m" / "versions").mkdir(parents=True)
    (site / "m" / "versions" / version.id).symlink_to(outside, target_is_directory=True)
    before = tree_snapshot(outside)
    try:
        store.publish(version)
    except UnsafePathError:
        pass
    assert tree_snapshot(outside) == before
    entry = site / "m" / "model.json"
    if entry.exists():  # published: then it must not be through the planted link
        assert not (site / "m" / "versions" / version.id).is_symlink()
        assert_store_ok(*dirs)


def test_symlink_planted_as_the_entry_point_is_replaced_not_written_through(
    store: Store, dirs, outside
) -> None:
    (dirs[1] / "m").mkdir()
    (dirs[1] / "m" / "model.json").symlink_to(outside / "precious.txt")
    before = tree_snapshot(outside)
    publish_model(store, "m", versioned_model(1))
    assert tree_snapshot(outside) == before
    assert not (dirs[1] / "m" / "model.json").is_symlink()
    assert_store_ok(*dirs)


def test_symlink_as_object_fanout_refuses_put(store: Store, dirs, outside) -> None:
    data = b"an object whose fanout directory is a planted symlink"
    digest = sha256(data)
    fan = dirs[0] / "objects" / "sha256" / digest[:2]
    fan.symlink_to(outside, target_is_directory=True)
    before = tree_snapshot(outside)
    with pytest.raises(UnsafePathError):
        store.put_bytes(data)
    assert tree_snapshot(outside) == before


@pytest.mark.parametrize("impostor", [False, True])
def test_symlink_as_object_fanout_refuses_publish(dirs, outside, impostor: bool) -> None:
    """An object's fanout directory replaced by a symlink after the object was stored.

    With ``impostor`` the outside directory holds a file under the object's name with
    other bytes: publishing must not take them (nor link them into site_dir).
    """
    state, site = dirs
    model = versioned_model(1)
    with store_at(state, site) as store:
        version = record_model(store, "m", model)
    shard = next(iter(model.shards.values()))
    digest = sha256(shard)
    fan = state / "objects" / "sha256" / digest[:2]
    shutil.rmtree(fan)
    fan.symlink_to(outside, target_is_directory=True)
    if impostor:
        (outside / digest).write_bytes(b"\0" * len(shard))
    before = tree_snapshot(outside)
    with store_at(state, site) as store:
        with pytest.raises(UnsafePathError):
            store.publish(version)
        assert store.current("m") is None
    assert tree_snapshot(outside) == before
    assert not (site / "m" / "model.json").exists()


@pytest.mark.parametrize("sub", ["snapshots/m", "refs", "history", "tmp", "partial"])
def test_symlink_in_state_dir_is_not_followed(dirs, outside, sub: str) -> None:
    state, site = dirs
    with store_at(state, site):
        pass
    target = state / sub
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside, target_is_directory=True)
    before = tree_snapshot(outside)
    with pytest.raises(UnsafePathError):
        with store_at(state, site) as store:
            publish_model(store, "m", versioned_model(1))
    assert tree_snapshot(outside) == before


def test_symlink_as_ref_file_is_never_written_through(dirs, outside) -> None:
    state, site = dirs
    with store_at(state, site):
        pass
    (state / "refs" / "m").symlink_to(outside / "precious.txt")
    before = tree_snapshot(outside)
    with store_at(state, site) as store:
        try:
            publish_model(store, "m", versioned_model(1))
        except ShardsyncError:
            pass
    assert tree_snapshot(outside) == before


def test_published_store_has_no_path_outside_its_dirs(store: Store, dirs) -> None:
    """Sanity for the checks above: a normal publish writes only below the two dirs."""
    model = versioned_model(1, subdir="a/b")
    publish_model(store, "m", model)
    for root in dirs:
        for p in root.rglob("*"):
            assert not p.is_symlink()
            assert os.path.realpath(p).startswith(os.path.realpath(root))
    assert object_path(dirs[0], sha256(model.manifest)).exists()


@pytest.mark.parametrize("manifest_name", ["versions", "sub/model.json"])
def test_manifest_name_that_cannot_be_an_entry_point_is_refused_before_writing(
    store: Store, dirs, manifest_name: str
) -> None:
    """The entry point is ``site/<name>/<manifest>``: the name must be one plain file
    name other than ``versions``. record() accepts the version only if publish can."""
    model = versioned_model(1, manifest_name=manifest_name)
    for data in (model.manifest, *model.shards.values()):
        store.put_bytes(data)
    before = (tree_snapshot(dirs[0]), tree_snapshot(dirs[1]))
    with pytest.raises(UnsafePathError):
        store.record("m", *model.entries())
    with pytest.raises(UnsafePathError):
        store.publish(Version.build("m", *model.entries()))
    assert (tree_snapshot(dirs[0]), tree_snapshot(dirs[1])) == before


_MAKE_DIRS = """
import os, sys
from shardsync.store._paths import open_dir, open_dir_at
fd = open_dir(sys.argv[1])
os.close(open_dir_at(fd, sys.argv[2], create=True))
"""


def test_open_dir_at_fsyncs_the_parent_of_every_directory_it_makes(tmp_path: Path) -> None:
    """A new fanout directory under a durable ref must survive a power cut: its entry
    in the parent is durable only once the parent is fsynced. strace shows the real
    system calls: every successful mkdirat is followed by an fsync of its parent, once,
    and a directory that existed already costs no fsync."""
    root = tmp_path / "root"
    (root / "old").mkdir(parents=True)
    trace = tmp_path / "trace"
    proc = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=mkdirat,mkdir,fsync", "-o", str(trace),
         sys.executable, "-B", "-c", _MAKE_DIRS, str(root), "old/a/b/c"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (root / "old" / "a" / "b" / "c").is_dir()
    calls = []  # (call, directory the call names) in order
    for line in trace.read_text().splitlines():
        if m := re.search(r'\b(mkdirat|fsync)\(\d+<([^>]*)>(?:, "([^"]*)")?.*\) = 0$', line):
            call, parent, seg = m.groups()
            calls.append((call, f"{parent}/{seg}" if seg else parent))
    made = [d for call, d in calls if call == "mkdirat"]
    assert made == [f"{root}/old/a", f"{root}/old/a/b", f"{root}/old/a/b/c"]
    for d in made:
        parent = d.rpartition("/")[0]
        after = calls[calls.index(("mkdirat", d)) + 1:]
        assert after and after[0] == ("fsync", parent), f"no fsync of {parent} after mkdir {d}"
    assert [d for call, d in calls if call == "fsync"] == [d.rpartition("/")[0] for d in made]


def _plant_version_symlink(site: Path, version: Version, outside: Path) -> Path:
    """Move the published version directory outside and leave a symlink to it in its
    place: every published path now leads through the link."""
    vdir = site / "m" / "versions" / version.id
    moved = outside / "moved-version"
    vdir.rename(moved)
    vdir.symlink_to(moved, target_is_directory=True)
    return moved


def test_verify_repair_never_unlinks_or_writes_through_a_planted_version_symlink(
    store: Store, dirs, outside
) -> None:
    """A corrupt object's published file is unlinked by repair, and a differing file
    put back: neither may happen through a symlink at ``site/<name>/versions/<id>``."""
    state, site = dirs
    model = versioned_model(1)
    version = publish_model(store, "m", model)
    moved = _plant_version_symlink(site, version, outside)
    rels = sorted(model.shards)
    # rot the object of one shard (its published hardlink, now outside, shares the bytes)
    rot = object_path(state, sha256(model.shards[rels[0]]))
    os.chmod(rot, 0o644)
    rot.write_bytes(b"\0" * len(model.shards[rels[0]]))
    os.chmod(rot, 0o444)
    # and give another file outside different bytes of the same size
    (moved / rels[1]).unlink()
    (moved / rels[1]).write_bytes(b"\1" * len(model.shards[rels[1]]))
    before = tree_snapshot(outside)
    problems = store.verify(repair=True)
    assert tree_snapshot(outside) == before
    published = [p for p in problems if p.kind.startswith("file-")]
    assert {p.path for p in published} == {*rels, "model.json"}
    assert not any(p.repaired for p in published)
    assert all("symlink" in p.detail for p in published)
    assert (site / "m" / "versions" / version.id).is_symlink()


_VERIFY_WITH_FIFO = """
import sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
with Store(sys.argv[1], sys.argv[2], entry_point=rewrite_paths) as s:
    for p in s.verify(repair=True):
        print(p.kind, p.path, p.repaired)
"""


def test_verify_does_not_hang_on_a_fifo_in_place_of_a_published_file(
    store: Store, dirs
) -> None:
    state, site = dirs
    model = versioned_model(1)
    version = publish_model(store, "m", model)
    rel = sorted(model.shards)[0]
    path = site / "m" / "versions" / version.id / rel
    path.unlink()
    os.mkfifo(path)
    proc = run_script(_VERIFY_WITH_FIFO, str(state), str(site), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == f"file-differs {rel} True"
    assert path.read_bytes() == model.shards[rel]
    assert store.verify() == []
