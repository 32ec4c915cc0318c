"""Process-wide tuning for large downloads: httpcore's read size, glibc malloc.

Why these values: docs/performance.md, "Socket read size and the allocator".

Called once per process before downloading (:func:`shardsync.daemon.httpclient.make_client`,
the service's startup, the one-shot sync); calling it again is harmless.
"""

from __future__ import annotations

import ctypes
import logging

import httpcore

__all__ = ["READ_NUM_BYTES", "tune_for_downloads"]

#: Socket read size. httpcore reads 64 KiB per call by default; the per-chunk cost of
#: the httpx/httpcore/h11/trio stack dominates a download (~60 µs per chunk, docs/performance.md),
#: so fewer, larger reads are the biggest single gain. Each read is copied ~3 times on
#: its way through h11, per download in flight: measured on a 1 GiB cold sync (4 in
#: flight), 1 MiB reads peaked at ~59 MB RSS, 512 KiB at ~45 MB (goal < 60) for ~2 %
#: more CPU, 256 KiB at ~41 MB for ~13 % more.
READ_NUM_BYTES = 512 * 1024

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_for_downloads() -> None:
    """Process-wide settings that docs/performance.md measured to matter for large downloads.

    * httpcore reads READ_NUM_BYTES per socket read (it has no public setting).
    * glibc returns large freed buffers to the OS and faults them back in (71k page
      faults per GiB); raising the mmap and trim thresholds keeps them (7.6k).
    """
    conn = getattr(httpcore, "AsyncHTTP11Connection", None)
    if conn is not None and hasattr(conn, "READ_NUM_BYTES"):
        conn.READ_NUM_BYTES = READ_NUM_BYTES
    else:  # a private attribute: a newer httpcore may not have it
        logging.getLogger(__name__).debug("httpcore has no READ_NUM_BYTES; read size not tuned")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
