"""The standard ``process_*`` metrics, read from ``/proc/self`` as prometheus_client does.

Prometheus' client libraries all export the same process families
(https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics), so
dashboards and alerts written for any exporter work here too. The numbers come from
the same places prometheus_client's ``ProcessCollector`` reads them:

- ``/proc/self/stat``: ``utime`` + ``stime`` (fields 14, 15, in clock ticks) for CPU
  seconds, ``starttime`` (22, ticks after boot), ``vsize`` (23, bytes), ``rss`` (24,
  pages);
- ``/proc/stat``'s ``btime`` (boot time, Unix seconds), for the start time;
- ``/proc/self/fd`` (one entry per open descriptor) and ``/proc/self/limits``'
  "Max open files" soft limit.

Everything is read fresh on each scrape: a few small procfs reads, which never block
on a disk. Where ``/proc`` is missing (not Linux) or unreadable, :func:`read_process`
returns None and the families are left out, as prometheus_client leaves them out:
a made-up zero would be a lie a dashboard cannot tell from the truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .metrics import Exposition

__all__ = ["ProcessStats", "add_process_metrics", "read_process"]

# Clock ticks per second (USER_HZ) and the page size: fixed for the life of the process.
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGESIZE")
# /proc/self/stat is one short line (a few hundred bytes); bounded anyway.
_READ_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ProcessStats:
    """One reading of the process, in the units the metrics are in."""

    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time: float
    open_fds: int
    max_fds: int | None  # None: "unlimited"


def read_process(proc: str = "/proc") -> ProcessStats | None:
    """Read this process's stats from ``proc`` (``/proc``), or None if it cannot be read."""
    try:
        stat = _read(f"{proc}/self/stat")
        # The command name (field 2) is in parentheses and may hold spaces or ')':
        # the fields that follow start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): field n is fields[n - 3].
        utime, stime = int(fields[11]), int(fields[12])
        starttime, vsize, rss = int(fields[19]), int(fields[20]), int(fields[21])
        btime = next(float(line.split()[1]) for line in _read(f"{proc}/stat").splitlines()
                     if line.startswith("btime "))
        open_fds = len(os.listdir(f"{proc}/self/fd"))
        max_fds = _max_open_files(_read(f"{proc}/self/limits"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return ProcessStats(cpu_seconds=(utime + stime) / _TICKS, resident_bytes=rss * _PAGE,
                        virtual_bytes=vsize, start_time=btime + starttime / _TICKS,
                        open_fds=open_fds, max_fds=max_fds)


def add_process_metrics(m: Exposition, stats: ProcessStats | None) -> None:
    """Add the ``process_*`` families for ``stats`` to ``m`` (nothing for None)."""
    if stats is None:
        return
    m.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
              stats.cpu_seconds)
    m.gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
            stats.resident_bytes)
    m.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
            stats.virtual_bytes)
    m.gauge("process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.", stats.start_time)
    m.gauge("process_open_fds", "Number of open file descriptors.", stats.open_fds)
    if stats.max_fds is not None:
        m.gauge("process_max_fds", "Maximum number of open file descriptors.", stats.max_fds)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read(_READ_LIMIT)


def _max_open_files(limits: str) -> int | None:
    """The soft limit on the "Max open files" line of /proc/self/limits (None: unlimited)."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return None if soft == "unlimited" else int(soft)
    raise ValueError("no 'Max open files' line in /proc/self/limits")
