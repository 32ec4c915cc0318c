"""Partial downloads: resume after close, after a killed writer, and after a (simulated) power cut.

The writer killed mid-stream is a real child process and the kill a real SIGKILL; a
power cut is simulated by giving the sidecar another boot id, which is exactly what a
reboot changes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storehelpers import object_files, object_path, sha256, store_at

from shardsync.store import IntegrityError, LockedError, Store
from shardsync.store._ingest import CHECKPOINT_BYTES, boot_id, ingest_ref

URL = "https://example.com/models/m/group1-shard1of1.bin"

#: Bytes the killed writer streams: several automatic checkpoints (CHECKPOINT_BYTES
#: is 16 MiB), written in well under a second so random kill points spread over it.
STREAM_BYTES = 48 * 1024 * 1024

#: Block of the deterministic stream both the child and the test can regenerate.
BLOCK = 256 * 1024


def stream(size: int = STREAM_BYTES) -> bytes:
    """The bytes the child writes: random but reproducible, block by block."""
    return b"".join(random.Random(i).randbytes(BLOCK) for i in range(size // BLOCK))[:size]


def partial_files(state_dir: Path) -> list[str]:
    return sorted(os.listdir(state_dir / "partial"))


def sidecar(state_dir: Path, url: str = URL) -> Path:
    return state_dir / "partial" / f"{ingest_ref(url)}.json"


def data_file(state_dir: Path, url: str = URL) -> Path:
    return state_dir / "partial" / f"{ingest_ref(url)}.data"


def test_close_and_reopen_resumes_with_same_validators(store: Store, dirs) -> None:
    data = os.urandom(300_000)
    ing = store.open_ingest(URL)
    assert ing.offset == 0 and ing.etag is None
    ing.start(etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
              expected_size=len(data))
    ing.write(data[:120_000])
    ing.close()

    meta = json.loads(sidecar(dirs[0]).read_bytes())
    assert meta["url"] == URL and meta["durable"] == 120_000
    [status] = store.ingests()
    assert (status.url, status.etag, status.expected_size, status.durable) == (
        URL, '"v1"', len(data), 120_000)

    ing = store.open_ingest(URL)
    assert ing.offset == 120_000
    assert (ing.etag, ing.last_modified, ing.expected_size) == (
        '"v1"', "Mon, 01 Jan 2024 00:00:00 GMT", len(data))
    assert ing.digest == sha256(data[:120_000])
    ing.start(etag='"v1"', last_modified=ing.last_modified, expected_size=len(data),
              offset=120_000)
    ing.write(data[120_000:])
    assert ing.commit(len(data), sha256(data)) == sha256(data)
    assert store.objects.read_verified(sha256(data)) == data
    assert partial_files(dirs[0]) == []
    assert store.ingests() == []


def test_resume_at_a_wrong_offset_is_refused(store: Store) -> None:
    with store.open_ingest(URL) as ing:
        ing.start(etag="e", last_modified=None, expected_size=None)
        ing.write(b"abcd")
        with pytest.raises(IntegrityError):
            ing.start(etag="e", last_modified=None, expected_size=None, offset=2)
        assert ing.offset == 4


@pytest.mark.parametrize("bad", ["size", "digest"])
def test_commit_with_wrong_size_or_digest_drops_the_partial(store: Store, dirs, bad) -> None:
    data = os.urandom(10_000)
    ing = store.open_ingest(URL)
    ing.start(etag=None, last_modified=None, expected_size=len(data))
    ing.write(data)
    size, digest = len(data), sha256(data)
    if bad == "size":
        size += 1
    else:
        digest = sha256(b"something else")
    with pytest.raises(IntegrityError) as exc:
        ing.commit(size, digest)
    assert exc.value.expected == (size if bad == "size" else digest)
    assert partial_files(dirs[0]) == []
    assert object_files(dirs[0]) == []
    # the URL can be opened again and starts from nothing
    with store.open_ingest(URL) as again:
        assert again.offset == 0


def test_commit_of_existing_object_rewrites_nothing(store: Store, dirs) -> None:
    data = os.urandom(20_000)
    digest = store.put_bytes(data)
    path = object_path(dirs[0], digest)
    before = os.stat(path)
    ing = store.open_ingest(URL)
    ing.start(etag=None, last_modified=None, expected_size=None)
    ing.write(data)
    assert ing.commit(None, digest) == digest
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (
        before.st_ino, before.st_mtime_ns, 1)
    assert [p.name for p in object_files(dirs[0])] == [digest]
    assert partial_files(dirs[0]) == []


def test_second_open_of_same_url_is_locked(store: Store, dirs) -> None:
    first = store.open_ingest(URL)
    first.start(etag=None, last_modified=None, expected_size=None)
    first.write(b"x" * 100)
    with pytest.raises(LockedError):
        store.open_ingest(URL)
    with store_at(*dirs) as other:  # another open of the store is another writer too
        with pytest.raises(LockedError):
            other.open_ingest(URL)
    with store.open_ingest(URL + "?other") as second:  # other URLs are independent
        assert second.offset == 0
    first.close()
    with store.open_ingest(URL) as again:
        assert again.offset == 100


def test_start_at_zero_after_a_200_drops_held_bytes(store: Store, dirs) -> None:
    with store.open_ingest(URL) as ing:
        ing.start(etag="old", last_modified=None, expected_size=None)
        ing.write(b"old bytes " * 1000)
    ing = store.open_ingest(URL)
    assert ing.offset == 10_000
    new = os.urandom(5000)
    ing.start(etag="new", last_modified=None, expected_size=len(new), offset=0)
    assert ing.offset == 0 and ing.digest == sha256(b"")
    assert data_file(dirs[0]).stat().st_size == 0
    meta = json.loads(sidecar(dirs[0]).read_bytes())
    assert (meta["etag"], meta["durable"]) == ("new", 0)
    ing.write(new)
    assert ing.commit(len(new), sha256(new)) == sha256(new)
    assert store.objects.read_verified(sha256(new)) == new


def test_abort_removes_the_partial(store: Store, dirs) -> None:
    ing = store.open_ingest(URL)
    ing.start(etag=None, last_modified=None, expected_size=None)
    ing.write(b"abc")
    ing.abort()
    assert partial_files(dirs[0]) == []


def test_automatic_checkpoint_makes_the_sidecar_claim_written_bytes(store: Store, dirs) -> None:
    ing = store.open_ingest(URL)
    ing.start(etag=None, last_modified=None, expected_size=None)
    ing.write(b"\0" * (CHECKPOINT_BYTES - 1))
    assert json.loads(sidecar(dirs[0]).read_bytes())["durable"] == 0
    ing.write(b"\0")
    assert json.loads(sidecar(dirs[0]).read_bytes())["durable"] == CHECKPOINT_BYTES
    ing.abort()


_WRITER = """
import random, sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
BLOCK = 256 * 1024
state, site, url = sys.argv[1:4]
size, every = int(sys.argv[4]), int(sys.argv[5])
with Store(state, site, entry_point=rewrite_paths) as s:
    ing = s.open_ingest(url)
    if ing.offset == 0:
        ing.start(etag='"e"', last_modified=None, expected_size=size)
    else:
        ing.start(etag=ing.etag, last_modified=None, expected_size=size, offset=ing.offset)
    start = pos = ing.offset
    n = 0
    while pos < size:
        blk = random.Random(pos // BLOCK).randbytes(BLOCK)[pos % BLOCK:]
        blk = blk[: min(len(blk), size - pos, 64 * 1024)]
        ing.write(blk)
        pos += len(blk)
        n += 1
        if n == 1:
            print(start, flush=True)  # resumed at `start`, and already writing
        if every and n % every == 0:
            ing.checkpoint()
    print("done", flush=True)
    sys.stdin.read()  # wait to be killed, ingest still open
"""


def _start_writer(dirs, size: int, every: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(dirs[0]), str(dirs[1]), URL, str(size), str(every)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), proc.stderr.read() if proc.stderr else line
    return proc, int(line)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f:
            f.close()


def test_killed_writer_resumes_at_full_size_in_same_boot(dirs) -> None:
    data = stream()
    proc, start = _start_writer(dirs, len(data), every=0)
    assert start == 0
    time.sleep(random.uniform(0, 0.1))
    _kill(proc)
    on_disk = data_file(dirs[0]).stat().st_size
    assert on_disk > 0  # the child had written its first block when it said so
    with store_at(*dirs) as store:
        ing = store.open_ingest(URL)
        assert ing.offset == on_disk  # same boot: everything write(2) took is trusted
        assert ing.etag == '"e"' and ing.expected_size == len(data)
        assert ing.digest == sha256(data[:on_disk])
        ing.start(etag=ing.etag, last_modified=None, expected_size=len(data), offset=ing.offset)
        ing.write(data[on_disk:])
        assert ing.commit(len(data), sha256(data)) == sha256(data)
        assert store.objects.read_verified(sha256(data)) == data


def test_sidecar_never_claims_more_than_the_file_holds(dirs) -> None:
    """SIGKILL a writer that checkpoints often, at random points, many times over."""
    size = 24 * 1024 * 1024
    data = stream(size)
    rng = random.Random(7)
    on_disk = 0
    for _ in range(12):
        proc, start = _start_writer(dirs, size, every=3)
        assert start == on_disk  # same boot: resumed at all the killed writer wrote
        time.sleep(rng.uniform(0, 0.03))
        _kill(proc)
        on_disk = data_file(dirs[0]).stat().st_size
        meta = json.loads(sidecar(dirs[0]).read_bytes())
        assert meta["durable"] <= on_disk
        assert meta["boot_id"] == boot_id()
        if on_disk == size:
            break
    with store_at(*dirs) as store:
        ing = store.open_ingest(URL)
        assert ing.digest == sha256(data[:ing.offset])
        ing.start(etag=ing.etag, last_modified=None, expected_size=size, offset=ing.offset)
        ing.write(data[ing.offset:])
        assert ing.commit(size, sha256(data)) == sha256(data)


def test_other_boot_resumes_only_from_durable(dirs) -> None:
    """A power cut: the sidecar's boot id is not this boot's, so only `durable` counts."""
    size = CHECKPOINT_BYTES + 3 * 1024 * 1024  # one automatic checkpoint, then 3 MiB more
    data = stream(size)
    proc, _ = _start_writer(dirs, size, every=0)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "done"  # all written, the ingest still open
    _kill(proc)
    meta = json.loads(sidecar(dirs[0]).read_bytes())
    assert meta["durable"] == CHECKPOINT_BYTES
    assert data_file(dirs[0]).stat().st_size == size
    meta["boot_id"] = "00000000-0000-0000-0000-000000000000"
    sidecar(dirs[0]).write_text(json.dumps(meta))
    with store_at(*dirs) as store:
        ing = store.open_ingest(URL)
        assert ing.offset == CHECKPOINT_BYTES
        assert data_file(dirs[0]).stat().st_size == CHECKPOINT_BYTES
        assert ing.etag == '"e"'
        assert ing.digest == sha256(data[:CHECKPOINT_BYTES])
        ing.start(etag='"e"', last_modified=None, expected_size=size, offset=CHECKPOINT_BYTES)
        ing.write(data[CHECKPOINT_BYTES:])
        assert ing.commit(size, sha256(data)) == sha256(data)


def test_damaged_sidecar_starts_over(store: Store, dirs) -> None:
    with store.open_ingest(URL) as ing:
        ing.start(etag="e", last_modified=None, expected_size=None)
        ing.write(b"z" * 1000)
    sidecar(dirs[0]).write_bytes(b'{"url": "' + URL.encode())  # torn JSON
    with store.open_ingest(URL) as ing:
        assert ing.offset == 0
        assert data_file(dirs[0]).stat().st_size == 0


_KILLED_IN_COMMIT = """
import os, signal, sys
from shardsync.store import Store
from shardsync.daemon.entrypoint import rewrite_paths
state, site, url, victim = sys.argv[1:5]
real_unlink = os.unlink

def unlink(name, *args, **kwargs):
    if str(name).endswith(victim):  # the kill lands right before this removal
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(name, *args, **kwargs)

with Store(state, site, entry_point=rewrite_paths) as s:
    data = bytes(range(256)) * 400
    ing = s.open_ingest(url)
    ing.start(etag='"c"', last_modified=None, expected_size=len(data))
    ing.write(data)
    os.unlink = unlink
    ing.commit(len(data), None)
"""


@pytest.mark.parametrize("victim", [".json", ".data"])
def test_kill_inside_commit_leaves_the_object_intact(dirs, victim: str) -> None:
    """SIGKILL after commit linked the partial into objects/, before the partial's
    removal (before the sidecar's, or between it and the data file's): the partial's
    data file is then a second name of the object. Resuming or restarting that URL
    must never write into the object."""
    data = bytes(range(256)) * 400
    digest = sha256(data)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_COMMIT, str(dirs[0]), str(dirs[1]), URL, victim],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    obj = object_path(dirs[0], digest)
    assert obj.read_bytes() == data  # the commit itself got through
    assert data_file(dirs[0]).exists()  # and the partial was not yet removed
    with store_at(*dirs) as store:
        ing = store.open_ingest(URL)
        assert obj.read_bytes() == data
        ing.start(etag='"new"', last_modified=None, expected_size=None, offset=0)  # a 200
        ing.write(b"a different body")
        assert obj.read_bytes() == data
        ing.commit(None, None)
        assert store.objects.verify(digest) == digest
        assert store.verify() == []


def test_commit_links_from_the_partial_directory_fd_never_by_path(
    store: Store, dirs, tmp_path: Path
) -> None:
    """A symlink planted as ``state_dir/partial`` while a download runs: the commit
    links the partial from the directory it was written in, not through the link."""
    state, _ = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    data = os.urandom(100_000)
    with store.open_ingest(URL) as ing:
        ing.start(etag=None, last_modified=None, expected_size=len(data))
        ing.write(data)
        (state / "partial").rename(state / "partial-moved")
        (state / "partial").symlink_to(outside, target_is_directory=True)
        assert ing.commit(len(data), sha256(data)) == sha256(data)
    assert object_path(state, sha256(data)).read_bytes() == data
    assert os.listdir(outside) == []
