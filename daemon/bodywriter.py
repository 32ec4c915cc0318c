"""A download's bytes, hashed and written by a worker thread while the loop receives more.

Why: with hashing and ``write(2)`` on the event loop, the loop thread was ~80 % busy
in a cold sync (issue 9: hashing and writing ~36 %, httpcore/h11 receiving ~25 %)
while the second core idled. Both hashlib (on buffers over 2 KiB) and ``write(2)``
release the GIL, so a worker thread runs them truly in parallel with the loop.

One write is in flight per download: :meth:`BodyWriter.write` waits for the previous
chunk's write, then hands this one over and returns at once; the loop receives the
next chunk meanwhile. So memory stays at two chunks per download, and a thread hop
(~100 µs, docs/performance.md) overlaps a receive instead of adding to it. The thread
comes from trio's own cache (``trio.lowlevel.start_thread_soon``).

A write that cannot be cancelled is never abandoned: whoever touches the ingest
after a write (commit, restart, abort, close) first calls :meth:`settle`, which
waits for the write in flight even under a cancel. A write's error (a full disk) is
raised by the next :meth:`write` or :meth:`wait`.
"""

from __future__ import annotations

import functools

import outcome
import trio

from shardsync.store import Ingest

__all__ = ["BodyWriter"]


class BodyWriter:
    """Appends to ``ingest`` from a worker thread, one chunk in flight at a time."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self._token = trio.lowlevel.current_trio_token()
        self._done: trio.Event | None = None
        self._result: outcome.Outcome[None] | None = None

    async def write(self, data: bytes | memoryview) -> None:
        """Wait for the previous write (raising its error), then start writing ``data``."""
        await self.wait()
        done = self._done = trio.Event()

        def deliver(result: outcome.Outcome[None]) -> None:  # runs in the worker thread
            self._result = result
            self._token.run_sync_soon(done.set)

        # auto_checkpoint: the fdatasync every CHECKPOINT_BYTES runs in the thread too.
        trio.lowlevel.start_thread_soon(functools.partial(self.ingest.write, data), deliver)

    async def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error."""
        if self._done is None:
            return
        await self._done.wait()
        self._done = None
        result, self._result = self._result, None
        assert result is not None
        result.unwrap()

    async def settle(self) -> None:
        """Wait for the write in flight, even under a cancel, and drop its error: the
        ingest is then the caller's alone (a failed write marked it broken already)."""
        if self._done is None:
            return
        with trio.CancelScope(shield=True):
            await self._done.wait()
        self._done = self._result = None
