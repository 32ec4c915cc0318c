"""What a resume asks for and what it accepts.

A partial download on disk is resumed with ``Range`` + ``If-Range``. :func:`resume_start`
says where the request starts: :data:`RESUME_OVERLAP` bytes before the partial's end, so
that the start of the answer can be compared with what is held before anything is
appended. :func:`same_validators` says whether a 206 comes from the same file as the
partial. :class:`.fetch.Fetcher` does the resuming; these rules are kept apart so that
the fetcher reads as a download and tests can compute what a resume re-asks.
"""

from __future__ import annotations

from shardsync.store import Ingest

from .httpanswers import Validators

__all__ = ["RESUME_OVERLAP", "resume_start", "same_validators"]

#: Most bytes a resume asks for again before the partial's end, to compare with what is
#: on disk before appending: a 206 with the right headers and the wrong body (from offset
#: 0 again, zeros, another file) is caught, at the cost of this much more per resume and
#: one read of the partial's tail. 64 KiB is well under one socket read.
RESUME_OVERLAP = 64 * 1024


def resume_start(held: int) -> int:
    """Where a resume of a partial holding ``held`` bytes asks the origin to start: the
    overlap before ``held`` (:data:`RESUME_OVERLAP`, at most half of what is held, so a
    resume always keeps most of what it has) is compared, not appended."""
    return held - min(RESUME_OVERLAP, held // 2)


def same_validators(held: Ingest, got: Validators) -> bool:
    """Whether a 206 comes from the file the partial holds the beginning of.

    The server should have checked our If-Range, but proxies and CDNs that mishandle it
    answer a 206 of a newer file: appending it would splice two versions into one file
    whose size may well be right. A validator the 206 carries must equal the one the
    partial has (an answer without validators cannot be checked this way).
    """
    if held.etag and got.etag:
        return held.etag == got.etag
    if held.last_modified and got.last_modified:
        return held.last_modified == got.last_modified
    return True
