"""Benchmark: `shardsync import` from a directory against `cp -r` + `sha256sum` of it.

Issue 11 ("Measure"): import speed from a directory (a USB stick's export) versus a
plain copy and hash of the same tree, in the same run. The import does more than the
reference: it parses the manifest, checks every group's size, hashes every byte into
the store, makes every object durable (fdatasync + directory fsync), records the
version and publishes it (hardlinks and an entry point); ``cp`` leaves dirty pages, so
the run also times a ``sync`` after the reference and prints that figure too. Each
import is a whole ``shardsync import`` process (start-up included) into a fresh
state_dir; the model's URL names a port nothing listens on: no network is used.

Usage (as root, to drop the page cache before every phase; otherwise it says so)::

    .venv/bin/python bench/import_bench.py                  # 1 GiB in 4 MiB shards, 3 rounds
    .venv/bin/python bench/import_bench.py --size-mb 256 --rounds 1

Everything lives in one temporary directory (default under /var/tmp: one filesystem,
outside any checkout), removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shardsync.daemon.demo.samples import make_big_model

__all__ = ["Round", "main", "run_round"]

#: Throughputs in MB/s with 1 MB = 10**6 bytes, the unit docs/performance.md uses.
MB = 1_000_000

#: Where the kernel takes "drop the page cache" requests (root only).
DROP_CACHES = "/proc/sys/vm/drop_caches"

#: 1 GiB, the size the other throughput benchmarks use (bench/store_put.py, sync_bench.py).
DEFAULT_SIZE_MB = 1024

#: Three rounds, medians printed: the machine is shared and noisy (docs/performance.md).
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class Round:
    """Seconds one round took for each phase."""

    reference: float  # cp -r + sha256sum
    reference_sync: float  # the sync that makes the copies durable
    imported: float  # the whole `shardsync import` process


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False if not allowed (not root)."""
    subprocess.run(["sync"], check=True)
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def write_config(directory: Path, manifest: str) -> Path:
    directory.mkdir()
    path = directory / "shardsync.toml"
    path.write_text('state_dir = "state"\nsite_dir = "site"\nsocket = "ctl.sock"\n\n'
                    f'[[model]]\nname = "big"\nurl = "http://127.0.0.1:9/big/{manifest}"\n')
    return path


def run_round(export: Path, manifest: str, work: Path, n: int) -> tuple[Round, bool]:
    """Time the reference and the import once; check that both saw the same bytes."""
    tree = export / "big"
    copy = work / f"copy-{n}"
    dropped = drop_caches()
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", "--", str(tree), str(copy)], check=True)
    files = sorted(p for p in copy.iterdir() if p.is_file())
    out = subprocess.run(["sha256sum", "--", *map(str, files)], check=True,
                         capture_output=True, text=True).stdout
    t1 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    t2 = time.perf_counter()
    reference = {Path(line.split(maxsplit=1)[1].lstrip("*")).name: line.split()[0]
                 for line in out.splitlines()}
    shutil.rmtree(copy)

    config = write_config(work / f"kiosk-{n}", manifest)
    dropped = drop_caches() and dropped
    t3 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "shardsync.daemon.cli", "import", "-c",
                          str(config), str(export), "--json"], capture_output=True, text=True)
    t4 = time.perf_counter()
    if run.returncode != 0:
        raise SystemExit(f"import failed: {run.stdout}{run.stderr}")
    result = json.loads(run.stdout)["models"][0]
    version_dir = config.parent / "site" / "big" / "versions" / result["version"]
    published = {p.name: p.stat().st_size for p in version_dir.iterdir()}
    if set(published) != set(reference):
        raise SystemExit("the import published other files than the reference copied")
    shutil.rmtree(config.parent)
    return Round(t1 - t0, t2 - t1, t4 - t3), dropped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=DEFAULT_SIZE_MB,
                        help="model size in MiB (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="rounds; medians are printed (default %(default)s)")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where to make the temporary directory (default %(default)s)")
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.rounds < 1:
        parser.error("--size-mb and --rounds must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="shardsync-import-bench-", dir=args.dir))
    try:
        sample = make_big_model(work / "usb", args.size_mb * 1024 * 1024, name="big")
        manifest = Path(sample.manifest).name
        tree = work / "usb" / "big"
        total = sum(p.stat().st_size for p in tree.iterdir())
        count = len(list(tree.iterdir()))
        print(f"export: {count} files, {total / MB:.0f} MB in {tree}")
        rounds, all_dropped = [], True
        for n in range(args.rounds):
            r, dropped = run_round(work / "usb", manifest, work, n)
            all_dropped &= dropped
            rounds.append(r)
            print(f"round {n + 1}: cp -r + sha256sum {total / MB / r.reference:6.0f} MB/s   "
                  f"+ sync {total / MB / (r.reference + r.reference_sync):6.0f} MB/s   "
                  f"shardsync import {total / MB / r.imported:6.0f} MB/s   "
                  f"ratio {r.reference / r.imported:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = statistics.median(total / MB / r.reference for r in rounds)
    ref_sync = statistics.median(total / MB / (r.reference + r.reference_sync) for r in rounds)
    imp = statistics.median(total / MB / r.imported for r in rounds)
    print(f"median of {len(rounds)}: cp -r + sha256sum {ref:.0f} MB/s, + sync {ref_sync:.0f} "
          f"MB/s, shardsync import {imp:.0f} MB/s")
    print(f"ratio import/reference: {imp / ref:.2f}; import/(reference + sync): "
          f"{imp / ref_sync:.2f}")
    print("page cache: " + ("dropped before every phase" if all_dropped else
                            "NOT dropped (needs root): sources may come from the cache"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
