"""Objects: content addressing, dedupe, immutability and verifying reads, on real files."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from storehelpers import (
    assert_store_ok,
    flip_byte,
    make_model,
    object_files,
    object_path,
    record_model,
    sha256,
    store_at,
    tree_snapshot,
)

from shardsync.store import IntegrityError, NotFoundError, Store
from shardsync.store._objects import check_digest


def test_put_bytes_returns_sha256_and_stores_under_fanout(store: Store, dirs) -> None:
    data = b"hello shards\n" * 1000
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = object_path(dirs[0], digest)
    assert path.read_bytes() == data
    assert store.objects.path(digest) == str(path)
    assert store.objects.has(digest)
    assert store.objects.info(digest).size == len(data)
    with store.objects.open(digest) as f:
        assert f.read() == data


def test_put_file_hashes_while_copying(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "shard.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # several CHUNK reads plus a tail
    src.write_bytes(data)
    digest = store.put_file(src)
    assert digest == sha256(data)
    assert store.objects.read_verified(digest) == data
    assert src.read_bytes() == data  # the source is copied, not moved
    assert os.stat(src).st_ino != os.stat(store.objects.path(digest)).st_ino


def test_empty_object(store: Store) -> None:
    digest = store.put_bytes(b"")
    assert digest == sha256(b"")
    assert store.objects.read_verified(digest) == b""


def test_same_bytes_twice_is_one_object(store: Store, dirs, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    src = tmp_path / "copy.bin"
    src.write_bytes(data)
    assert store.put_bytes(data) == store.put_bytes(data) == store.put_file(src)
    assert [p.name for p in object_files(dirs[0])] == [sha256(data)]
    assert os.listdir(dirs[0] / "tmp") == []  # no temporary left behind


def test_two_models_sharing_a_shard_share_one_object(store: Store, dirs) -> None:
    shared = os.urandom(40_000)
    a = make_model({"group1-shard1of2.bin": shared, "group1-shard2of2.bin": os.urandom(400)},
                   tag="a")
    b = make_model({"w/shared.bin": shared, "w/own.bin": os.urandom(800)}, tag="b")
    va = record_model(store, "model-a", a)
    vb = record_model(store, "model-b", b)
    store.publish(va)
    store.publish(vb)
    names = [p.name for p in object_files(dirs[0])]
    assert len(names) == len(set(names)) == 5  # 2 manifests + shared + 2 own shards
    assert names.count(sha256(shared)) == 1
    # both published copies are the one object
    obj = os.stat(object_path(dirs[0], sha256(shared)))
    pa = dirs[1] / "model-a" / "versions" / va.id / "group1-shard1of2.bin"
    pb = dirs[1] / "model-b" / "versions" / vb.id / "w" / "shared.bin"
    assert os.stat(pa).st_ino == os.stat(pb).st_ino == obj.st_ino


def test_existing_object_is_not_rewritten(store: Store, dirs, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    digest = store.put_bytes(data)
    path = object_path(dirs[0], digest)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime no rewrite could keep
    before = os.stat(path)
    src = tmp_path / "again.bin"
    src.write_bytes(data)
    assert store.put_bytes(data) == digest
    assert store.put_file(src) == digest
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    assert after.st_nlink == 1


def test_objects_are_read_only(store: Store, dirs, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 10)
    for digest in (store.put_bytes(b"x" * 10), store.put_file(src)):
        assert stat.S_IMODE(os.stat(object_path(dirs[0], digest)).st_mode) == 0o444




def test_read_verified_and_verify_detect_a_flipped_byte(store: Store, dirs) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    digest = store.put_bytes(data)
    assert store.objects.verify(digest) == digest
    flip_byte(object_path(dirs[0], digest), 1_500_000, 0x01)
    actual = store.objects.verify(digest)
    assert actual != digest
    assert actual == sha256(object_path(dirs[0], digest).read_bytes())
    with pytest.raises(IntegrityError) as exc:
        store.objects.read_verified(digest)
    assert exc.value.expected == digest and exc.value.actual == actual


@pytest.mark.parametrize("bad", [
    "", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61,
    "0" * 62 + "/x", "0" * 63 + "\0", "0" * 64 + "\n", " " + "0" * 63,
])
def test_bad_digest_is_refused(store: Store, dirs, bad: str) -> None:
    before = tree_snapshot(dirs[0])
    with pytest.raises(IntegrityError):
        check_digest(bad)
    for op in (store.objects.path, store.objects.has, store.objects.open,
               store.objects.read_verified, store.objects.verify, store.objects.delete):
        with pytest.raises(IntegrityError):
            op(bad)
    assert tree_snapshot(dirs[0]) == before


def test_missing_object_is_not_found(store: Store) -> None:
    digest = sha256(b"never stored")
    assert not store.objects.has(digest)
    with pytest.raises(NotFoundError):
        store.objects.open(digest)
    with pytest.raises(NotFoundError):
        store.objects.info(digest)


def test_walk_lists_every_object_with_its_size(store: Store) -> None:
    blobs = [os.urandom(n) for n in (1, 10, 1000, 100_000)]
    want = {sha256(b): len(b) for b in blobs}
    for b in blobs:
        store.put_bytes(b)
    assert {i.digest: i.size for i in store.objects.walk()} == want


def test_delete_removes_and_tolerates_missing(store: Store, dirs) -> None:
    digest = store.put_bytes(b"to delete")
    store.objects.delete(digest)
    assert not object_path(dirs[0], digest).exists()
    store.objects.delete(digest)  # missing is fine


def test_leftover_temporaries_are_removed_on_open(dirs) -> None:
    with store_at(*dirs):
        pass
    leftover = dirs[0] / "tmp" / ".tmp-obj-deadbeef0000"
    leftover.write_bytes(b"half an object")
    with store_at(*dirs):
        assert not leftover.exists()


_PUT_SCRIPT = """
import random, sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
blobs = [random.Random(i).randbytes(256 * 1024) for i in range(40)]
random.Random(int(sys.argv[3])).shuffle(blobs)  # every process in its own order
with Store(sys.argv[1], sys.argv[2], entry_point=rewrite_paths) as s:
    for b in blobs:
        print(s.put_bytes(b), flush=True)
"""


def test_concurrent_puts_from_processes_leave_one_object_each(dirs) -> None:
    """Four processes put the same 40 objects at once: all succeed, one copy each."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _PUT_SCRIPT, str(dirs[0]), str(dirs[1]), str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    want = {sha256(random.Random(i).randbytes(256 * 1024)) for i in range(40)}
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert set(out.split()) == want
    assert sorted(p.name for p in object_files(dirs[0])) == sorted(want)
    assert_store_ok(*dirs)


_PAUSED_PUT = """
import os, sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
real_link = os.link

def link(*args, **kwargs):  # pause between the temporary's write and its link
    print("linking", flush=True)
    sys.stdin.readline()
    return real_link(*args, **kwargs)

with Store(sys.argv[1], sys.argv[2], entry_point=rewrite_paths) as s:
    os.link = link
    print(s.put_bytes(b"written while another process opens the store"), flush=True)
"""


def test_opening_the_store_does_not_break_a_put_in_another_process(dirs) -> None:
    """``shardsync verify`` or ``gc`` opening the store while the service is putting an
    object: the service's put must still succeed."""
    with store_at(*dirs):
        pass
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_PUT, str(dirs[0]), str(dirs[1])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "linking\n"
        with store_at(*dirs):  # another process opens the store meanwhile
            pass
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == sha256(b"written while another process opens the store")


def _swap_for_symlink(d: Path, outside: Path) -> None:
    """Move directory ``d`` aside (open fds keep pointing at it) and plant a symlink to
    ``outside`` under its name: any access by path now leads outside."""
    d.rename(d.with_name(d.name + "-moved"))
    d.symlink_to(outside, target_is_directory=True)


def test_commit_links_from_the_temporary_directory_fd_never_by_path(
    store: Store, dirs, tmp_path: Path
) -> None:
    """A symlink planted as ``state_dir/tmp`` after the store opened: a put links its
    temporary from the directory it wrote it in, not through the planted link."""
    state, _ = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"do not touch\n")
    before = tree_snapshot(outside)
    _swap_for_symlink(state / "tmp", outside)
    data = os.urandom(5000)
    assert store.put_bytes(data) == sha256(data)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(7000))
    assert store.put_file(src) == sha256(src.read_bytes())
    assert object_path(state, sha256(data)).read_bytes() == data
    assert object_path(state, sha256(src.read_bytes())).read_bytes() == src.read_bytes()
    assert tree_snapshot(outside) == before
    assert_store_ok(*dirs)
