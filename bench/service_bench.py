"""Benchmark: the running service's control-socket latency and its idle CPU.

Issue 4 ("Measure"), against the real ``shardsync run`` in a subprocess and nginx as
the origin (``bench/nginx.py``):

1. Latency of ``GET /v1/status`` over the Unix socket (p50, p99 of ~1000 requests
   from this process, one keep-alive connection, a short pause between requests)
   while a large model downloads at full speed; goal p99 < 10 ms. Only answers that
   themselves say ``downloading`` count. The same with nothing to do is the
   reference. The download is restarted from an empty store until enough samples
   were taken.
2. Idle CPU of the service with 100 models configured: after the first sync of all
   of them, the process's CPU time (utime + stime of every thread, from
   ``/proc/<pid>/stat``) over a window, as a percentage of one core; goal < 1 %.
   Run with the default interval (30m) and, as a harder case, a short one in which
   every model is checked (conditional requests, 304s) several times in the window.

Usage::

    .venv/bin/python bench/service_bench.py                    # 1 GiB, 1000 requests, 60 s
    .venv/bin/python bench/service_bench.py --size-mb 256 --idle-seconds 20

Data lives in a temporary directory under ``--dir`` (default /var/tmp), removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from nginx import serve_directory  # bench/nginx.py: also puts tests/ on sys.path
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from synchelpers import write_config

from shardsync.daemon.demo.samples import make_big_model

__all__ = ["StatusClient", "cpu_seconds", "main", "percentile"]

#: Throughputs in MB/s with 1 MB = 10**6 bytes, as docs/performance.md.
MB = 1_000_000

#: Pause between two status requests: a dashboard polling hard, not a flood that would
#: itself take the second core from the download.
PAUSE = 0.002

#: Downloads tried at most to gather the requested samples (each from an empty store).
MAX_ROUNDS = 6

#: Watchdog period as the unit sets it (WatchdogSec=30s): pings every 15 s count as idle work.
WATCHDOG_USEC = "30000000"

#: Seconds of quiet after the first sync before the CPU window opens.
SETTLE = 3.0

#: Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK")


class StatusClient:
    """A minimal HTTP/1.1 client on one keep-alive Unix-socket connection.

    Deliberately thin (no httpx) so that the figures are the service's latency, not the
    client's overhead.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buf = b""

    def get(self, target: str) -> bytes:
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"GET {target}: {head!r}")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                      if line.lower().startswith(b"content-length:"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return body

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("the service closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def summary(name: str, samples: Sequence[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (f"{name}: n={len(ms)}  p50 {percentile(ms, 50):.2f} ms  "
            f"p90 {percentile(ms, 90):.2f} ms  p99 {percentile(ms, 99):.2f} ms  "
            f"max {max(ms):.2f} ms")


def start(config: Path, work: Path, sockdir: Path, tag: str, **env: str
          ) -> tuple[ServiceProcess, NotifySocket]:
    notify = NotifySocket(sockdir / f"notify-{tag}")
    svc = ServiceProcess(config, work / f"service-{tag}.log", notify=notify, env=env)
    svc.start()
    return svc, notify


def stop(svc: ServiceProcess, notify: NotifySocket) -> None:
    try:
        code = svc.stop()
        if code != 0:
            raise SystemExit(f"the service exited with {code}\n{svc.log_tail()}")
    finally:
        svc.close()
        notify.close()


# -- 1: latency ----------------------------------------------------------------------------


def latency(work: Path, sockdir: Path, size: int, requests: int) -> None:
    origin_root = work / "origin"
    print(f"making a {size / MB:.0f} MB model ...", flush=True)
    model = make_big_model(origin_root, size, name="big")
    conf = work / "latency"
    with serve_directory(origin_root, work / "nginx-latency") as origin:
        config = write_config(conf, {"big": origin.url_for("big/model.json")},
                              socket=str(sockdir / "lat.sock"))
        during: list[float] = []
        rates = []
        for n in range(MAX_ROUNDS):
            shutil.rmtree(conf / "state", ignore_errors=True)
            shutil.rmtree(conf / "site", ignore_errors=True)
            svc, notify = start(config, work, sockdir, f"lat{n}")
            client = StatusClient(svc.socket)
            t0 = time.perf_counter()
            try:
                while True:
                    t = time.perf_counter()
                    body = client.get("/v1/status")
                    dt = time.perf_counter() - t
                    m = json.loads(body)["models"][0]
                    if m["state"] == "downloading":
                        during.append(dt)
                    elif m["state"] == "idle" and m["version"]:
                        break
                    elif m["state"] == "error":
                        raise SystemExit(f"the download failed: {m['last_error']}")
                    time.sleep(PAUSE)
                rates.append(model.size / MB / (time.perf_counter() - t0))
                print(f"  round {n + 1}: download + publish at {rates[-1]:.0f} MB/s, "
                      f"{len(during)} samples so far", flush=True)
            finally:
                client.close()
                stop(svc, notify)
            if len(during) >= requests:
                break

        # The reference: the same service, model in place, nothing to download.
        svc, notify = start(config, work, sockdir, "lat-idle")
        client = StatusClient(svc.socket)
        try:
            svc.wait_status(lambda s: s["models"][0]["state"] == "idle"
                            and s["models"][0]["last_check"] is not None, "checked")
            idle = []
            for _ in range(requests):
                t = time.perf_counter()
                client.get("/v1/status")
                idle.append(time.perf_counter() - t)
                time.sleep(PAUSE)
        finally:
            client.close()
            stop(svc, notify)
    print(summary("GET /v1/status during the download", during[:max(requests, 1)]))
    print(summary("GET /v1/status idle (reference)  ", idle))
    ok = percentile([s * 1000 for s in during], 99) < 10
    print(f"download rate (whole sync, status polled): median {statistics.median(rates):.0f} "
          f"MB/s; goal p99 < 10 ms during the download: {'met' if ok else 'MISSED'}")


# -- 2: idle CPU ------------------------------------------------------------------------------


def idle_cpu(work: Path, sockdir: Path, models: int, seconds: float, interval: str) -> None:
    root = work / "origin-many"
    if not root.exists():
        for i in range(models):
            make_big_model(root, 16 * 1024, seed=i, name=f"m{i:03d}")
    conf = work / f"idle-{interval}"
    with serve_directory(root, work / f"nginx-idle-{interval}") as origin:
        urls = {f"m{i:03d}": origin.url_for(f"m{i:03d}/model.json") for i in range(models)}
        config = write_config(conf, urls, socket=str(sockdir / f"idle-{interval}.sock"),
                              interval=interval)
        svc, notify = start(config, work, sockdir, f"idle-{interval}",
                            WATCHDOG_USEC=WATCHDOG_USEC)
        try:
            t0 = time.perf_counter()
            svc.wait_status(lambda s: all(m["state"] == "idle" and m["version"]
                                          for m in s["models"]), "every model synced",
                            timeout=600)
            first = time.perf_counter() - t0
            time.sleep(SETTLE)
            hits_before = len(origin.hits())
            c0, w0 = cpu_seconds(svc.pid), time.perf_counter()
            time.sleep(seconds)
            c1, w1 = cpu_seconds(svc.pid), time.perf_counter()
            hits = len(origin.hits()) - hits_before
        finally:
            stop(svc, notify)
    pct = 100 * (c1 - c0) / (w1 - w0)
    print(f"idle CPU, {models} models, interval {interval}: {pct:.2f} % of a core over "
          f"{w1 - w0:.0f} s ({c1 - c0:.2f} s CPU; {hits} origin requests in the window; "
          f"first sync of all took {first:.1f} s); goal < 1 %: "
          f"{'met' if pct < 1 else 'MISSED'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024,
                        help="the downloaded model, MiB (default %(default)s)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="status requests per phase (default %(default)s)")
    parser.add_argument("--models", type=int, default=100,
                        help="models for the idle CPU phase (default %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="CPU measurement window (default %(default)s)")
    parser.add_argument("--intervals", default="30m,20s",
                        help="check intervals for the idle phase (default %(default)s)")
    parser.add_argument("--skip", choices=("latency", "idle"), action="append", default=[])
    parser.add_argument("--dir", default="/var/tmp",
                        help="where to make the temporary directory (default %(default)s)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="shardsync-svcbench-", dir=args.dir))
    try:
        with short_dir() as sockdir:
            if "latency" not in args.skip:
                latency(work, sockdir, args.size_mb * 1024 * 1024, args.requests)
            if "idle" not in args.skip:
                for interval in args.intervals.split(","):
                    idle_cpu(work, sockdir, args.models, args.idle_seconds, interval)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
