"""BodyWriter: a download's bytes written by a worker thread, one chunk in flight.

Against a real store's ingest on real files (and a real full tmpfs): the bytes land in
order under the right digest; a cancel never abandons a write in flight (settle waits
for it, so the ingest is consistent before anyone else touches it); a write's error
comes out of the next wait.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
from storehelpers import mounted_tmpfs, store_at

from shardsync.daemon.bodywriter import BodyWriter
from shardsync.store import StorageError

URL = "http://origin.test/m/group1-shard1of1.bin"


def test_chunks_land_in_order_under_their_digest(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, 70_000, 512 * 1024, 3, 2 * 1024 * 1024)]

    async def main() -> str:
        with store_at(tmp_path / "state", tmp_path / "site") as store:
            ingest = store.open_ingest(URL)
            ingest.start(etag='"e"', last_modified=None, expected_size=None)
            writer = BodyWriter(ingest)
            for c in chunks:
                await writer.write(memoryview(c))
            await writer.wait()
            assert ingest.offset == sum(map(len, chunks))
            return ingest.commit(None, None)

    assert trio.run(main) == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_a_cancel_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    big = os.urandom(64 * 1024 * 1024)  # tens of ms in the thread: the cancel lands mid-write

    async def main() -> None:
        with store_at(tmp_path / "state", tmp_path / "site") as store:
            ingest = store.open_ingest(URL)
            ingest.start(etag='"e"', last_modified=None, expected_size=None)
            writer = BodyWriter(ingest)
            with trio.CancelScope() as scope:
                await writer.write(big)
                scope.cancel()
                await writer.wait()  # cancelled here, the thread still writing
            assert scope.cancelled_caught
            await writer.settle()
            # The write finished before settle returned: offset, file and hash agree.
            assert ingest.offset == len(big)
            assert ingest.digest == hashlib.sha256(big).hexdigest()
            ingest.close()
        data = next((tmp_path / "state" / "partial").glob("*.data")).read_bytes()
        assert data == big

    trio.run(main)


def test_a_failed_write_is_raised_by_the_next_wait(tmp_path: Path) -> None:
    chunk = os.urandom(1024 * 1024)

    async def main(state: Path) -> None:
        with store_at(state, tmp_path / "site") as store:
            ingest = store.open_ingest(URL)
            ingest.start(etag='"e"', last_modified=None, expected_size=None)
            writer = BodyWriter(ingest)
            with pytest.raises(StorageError, match="No space left") as info:
                for _ in range(16):  # 16 MiB into an 8 MiB filesystem
                    await writer.write(chunk)
                await writer.wait()
            assert info.value.file == URL
            await writer.settle()
            ingest.close()

    with mounted_tmpfs(tmp_path / "small", "8m") as mnt:
        trio.run(main, mnt / "state")
