"""Version records and refs as the disk may hold them: damaged, dangling, or updated in place.

Damage is made by writing the files directly, as a torn write, a disk fault or a hand
edit would leave them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from storehelpers import assert_store_ok, publish_model, store_at, versioned_model

from shardsync.store import (
    FileEntry,
    IntegrityError,
    StorageError,
    Store,
    UnsafePathError,
    Version,
)


def record_file(state: Path, version: Version) -> Path:
    return state / "snapshots" / version.name / f"{version.id}.json"


@pytest.mark.parametrize("damage", [
    b"{\"name\": \"m\", \"vers",                 # torn: JSON that does not parse
    b"{\"name\": \"m\"}",                         # a key missing
    b"[1, 2, 3]",                                 # not an object at all
    b"{\"name\": \"m\", \"files\": 7}",           # a value of the wrong type
    b"\xff\xfe garbage",                          # not UTF-8
])
def test_a_damaged_record_is_an_integrity_error_naming_model_and_file(
    store: Store, dirs, damage: bytes
) -> None:
    state, _ = dirs
    version = publish_model(store, "m", versioned_model(1))
    record_file(state, version).write_bytes(damage)
    with pytest.raises(IntegrityError) as info:
        store.versions.get("m", version.id)
    assert (info.value.model, info.value.file) == ("m", f"{version.id}.json")


def test_update_record_replaces_the_origin_metadata_of_the_same_version(
    store: Store, dirs
) -> None:
    state, _ = dirs
    version = publish_model(store, "m", versioned_model(1))
    files = tuple(FileEntry(f.path, f.digest, f.size, {"etag": '"new"'}) for f in version.files)
    updated = Version.build("m", version.manifest, files)
    assert updated.id == version.id  # validators are not part of the version
    store.update_record(updated)
    on_disk = json.loads(record_file(state, version).read_bytes())
    assert [f["meta"] for f in on_disk["files"]] == [{"etag": '"new"'}] * len(files)
    assert store.current("m") is not None
    assert [f.meta for f in store.current("m").files] == [{"etag": '"new"'}] * len(files)


def test_update_record_translates_a_filesystem_error_and_names_the_model(
    store: Store, dirs
) -> None:
    state, _ = dirs
    version = publish_model(store, "m", versioned_model(1))
    # A directory where the record is: the rename over it fails (EISDIR), as a real
    # filesystem error would; tests run as root, so permissions cannot make it fail.
    path = record_file(state, version)
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"")
    with pytest.raises(StorageError) as info:
        store.update_record(version)
    assert info.value.model == "m"
    assert isinstance(info.value.__cause__, OSError)
    assert not [e for e in os.listdir(path.parent) if e.startswith(".tmp-")]


def _dangle(state: Path, version: Version, how: str) -> None:
    """Leave ``refs/m`` naming ``version`` with its record missing or damaged."""
    path = record_file(state, version)
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:40])  # torn


@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_a_dangling_ref_is_no_current_version_and_the_next_publish_heals_it(
    store: Store, dirs, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    state, site = dirs
    model = versioned_model(1)
    version = publish_model(store, "m", model)
    _dangle(state, version, how)
    with caplog.at_level(logging.WARNING, logger="shardsync.store._store"):
        assert store.current("m") is None
    assert any("m" in r.getMessage() and version.id in r.getMessage() for r in caplog.records)
    # what the next sync does: publish the version it fetched (here the same one)
    publish_model(store, "m", model)
    assert store.current("m") == store.versions.get("m", version.id)
    assert store.verify() == []
    assert_store_ok(state, site)


@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_verify_reports_a_dangling_ref_and_repair_drops_ref_and_history(
    store: Store, dirs, how: str
) -> None:
    state, site = dirs
    version = publish_model(store, "m", versioned_model(1))
    _dangle(state, version, how)
    [p] = store.verify()
    assert (p.kind, p.model, p.version, p.repaired) == ("ref-dangling", "m", version.id, False)
    assert (state / "refs" / "m").exists()  # verify alone changes nothing

    [p] = store.verify(repair=True)
    assert (p.kind, p.model, p.version, p.repaired) == ("ref-dangling", "m", version.id, True)
    assert not (state / "refs" / "m").exists()
    assert not (state / "history" / "m.json").exists()
    assert store.verify() == []
    publish_model(store, "m", versioned_model(2))
    assert_store_ok(state, site)


def test_verify_reports_a_damaged_record_of_an_older_version(dirs) -> None:
    state, site = dirs
    with store_at(*dirs, keep_versions=2, grace=0) as store:
        old = publish_model(store, "m", versioned_model(1), now=1000.0)
        publish_model(store, "m", versioned_model(2), now=2000.0)
        record_file(state, old).write_bytes(b"{")
        [p] = store.verify()
        assert (p.kind, p.model, p.version, p.repaired) == ("record-damaged", "m", old.id, False)
        [p] = store.verify(repair=True)
        assert p.repaired and not record_file(state, old).exists()
        assert store.verify() == []
        assert_store_ok(state, site)


def test_a_planted_symlink_ref_history_or_record_is_an_error_naming_model_and_file(
    store: Store, dirs, tmp_path: Path
) -> None:
    # Issue 14 (6): O_NOFOLLOW gave a bare ELOOP naming nothing. Each per-model file the
    # store reads, replaced by a symlink to a file outside state_dir: an UnsafePathError
    # naming the model and the file, and the target neither read nor changed.
    state, _ = dirs
    version = publish_model(store, "m", versioned_model(1))
    bait = tmp_path / "bait"
    bait.write_bytes(b"not shardsync's\n")
    for rel, read in [
        ("refs/m", lambda: store.current_id("m")),
        ("refs/m", lambda: store.current("m")),
        ("history/m.json", lambda: store.history("m")),
        (f"snapshots/m/{version.id}.json", lambda: store.version("m", version.id)),
    ]:
        planted = state / rel
        saved = planted.read_bytes()
        planted.unlink()
        planted.symlink_to(bait)
        with pytest.raises(UnsafePathError, match="symlink") as info:
            read()
        assert (info.value.model, info.value.file) == ("m", rel)
        assert f"model m: file {rel}: " in str(info.value)
        planted.unlink()
        planted.write_bytes(saved)
    assert bait.read_bytes() == b"not shardsync's\n"


def test_a_file_name_too_long_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    # Issue 14 (7): ENAMETOOLONG said "File name too long" and named no file. A state_dir
    # with a 300-byte component, opened for real: the message names that component.
    long = "s" * 300
    with pytest.raises(StorageError) as info:
        store_at(tmp_path / long / "state", tmp_path / "site")
    msg = str(info.value)
    assert "File name too long" in msg and "300 bytes" in msg and "255" in msg
    assert "s" * 40 in msg
