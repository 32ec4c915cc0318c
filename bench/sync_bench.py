"""Benchmarks of `shardsync sync` against nginx on loopback, each beside its reference.

What issue 3 asks to measure, in one run on one machine (docs/performance.md: the machine is
shared and noisy, so only figures taken in the same run are compared):

* cold sync of a model set (default 1 GiB in 4 MiB shards) by ``shardsync sync`` vs
  one ``curl`` process fetching the same files over one reused connection, plus
  ``sha256sum`` of them (what shardsync does: download and verify). Goal: >= 0.8x.
* warm re-sync with nothing changed, 100 models x 10 shards: wall time of the whole
  ``shardsync sync`` process (goal < 1 s) and the body bytes nginx logged (goal 0).
* peak RSS of ``shardsync sync`` (goal < 60 MB whatever the model size), read from
  ``wait4(2)`` of that one child.
* with ``--signed`` (issue 10): the same warm re-sync of the same models, each signed
  by ``shardsync sign`` and configured with ``public_keys``, beside the unsigned one in
  the same run; their ratio.

``shardsync`` runs as a subprocess with this interpreter, as an operator runs it.
Everything lives in a temporary directory (``--workdir`` chooses its parent), removed
at the end. Run ``python bench/sync_bench.py --help`` for the knobs; the defaults are
the issue's sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nginx import NginxOrigin, serve_directory  # bench/nginx.py: makes tests/ importable
from storehelpers import write_model
from synchelpers import cli_command, tfjs_model, write_config

from shardsync.daemon.demo.samples import CONVERTER_SHARD_SIZE, make_big_model

__all__ = ["main"]

MiB = 1024 * 1024
MB = 1_000_000  # rates in MB/s, as docs/performance.md gives them

#: Goals from issue 3.
GOAL_RATIO = 0.8
GOAL_WARM_SECONDS = 1.0
GOAL_RSS_MB = 60.0


@dataclass
class Measured:
    """One child process: wall seconds, exit status, peak RSS (MB), its output files, and
    its CPU seconds (user + system: less disturbed than wall time by a busy machine)."""

    seconds: float
    status: int
    maxrss_mb: float
    stdout: Path
    stderr: Path
    cpu_seconds: float = 0.0

    def check(self, what: str) -> None:
        if self.status != 0:
            raise SystemExit(f"{what} failed with status {self.status}:\n"
                             f"{self.stderr.read_text(errors='replace')[-4000:]}")


def run_measured(argv: Sequence[str], out_dir: Path, tag: str) -> Measured:
    """Run ``argv`` to the end; time it and read its own rusage with wait4(2).

    (RUSAGE_CHILDREN would mix in every child waited for so far: curl, sha256sum.)
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = out_dir / f"{tag}.out", out_dir / f"{tag}.err"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, str(stdout), flags, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, str(stderr), flags, 0o644)]
    exe = shutil.which(argv[0]) or argv[0]
    start = time.perf_counter()
    pid = os.posix_spawn(exe, list(argv), os.environ, file_actions=actions)
    _, wstatus, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    return Measured(seconds, os.waitstatus_to_exitcode(wstatus), usage.ru_maxrss * 1024 / MB,
                    stdout, stderr, usage.ru_utime + usage.ru_stime)


# -- the data --------------------------------------------------------------------------


def make_cold_set(root: Path, total: int, shard: int, models: int) -> list[str]:
    """``models`` layers-models of ``total / models`` bytes each in ``shard``-byte shards
    (samples.make_big_model); returns their manifests' paths relative to ``root``."""
    out = []
    for i in range(models):
        sample = make_big_model(root, total // models, shard_size=shard, seed=1000 + i,
                                name=f"cold{i}")
        out.append(sample.manifest)
    return out


def make_warm_set(root: Path, models: int, shards: int, shard_size: int) -> list[str]:
    """``models`` graph-models of ``shards`` distinct random shards each (nothing dedupes
    by accident); returns their manifests' paths relative to ``root``."""
    rng = random.Random(7)
    out = []
    for i in range(models):
        group = {f"group1-shard{k}of{shards}.bin": rng.randbytes(shard_size)
                 for k in range(1, shards + 1)}
        write_model(root / f"warm{i}", tfjs_model("graph-model", [group], tag=i))
        out.append(f"warm{i}/model.json")
    return out


def files_of(root: Path, manifests: list[str]) -> list[str]:
    """Every file of the models (manifest first, then its shards), relative to ``root``."""
    out = []
    for rel in manifests:
        doc = json.loads((root / rel).read_bytes())
        base = rel.rpartition("/")[0]
        groups = doc if isinstance(doc, list) else doc["weightsManifest"]
        out.append(rel)
        out += [f"{base}/{p}" for g in groups for p in g["paths"]]
    return out


# -- the runs ----------------------------------------------------------------------------


def run_sync(work: Path, nginx: NginxOrigin, manifests: list[str], tag: str,
             fresh: bool, public_key: str | None = None) -> tuple[Measured, dict]:
    """``shardsync sync --json`` of every model in ``manifests``; (measure, JSON). With
    ``public_key`` every model trusts it, in a store of its own (``sync-signed``)."""
    conf_dir = work / ("sync" if public_key is None else "sync-signed")
    if fresh and conf_dir.exists():
        shutil.rmtree(conf_dir)
    models = {rel.partition("/")[0]: nginx.url_for(rel) for rel in manifests}
    keys = {name: {"public_keys": [public_key]} for name in models} if public_key else None
    config = write_config(conf_dir, models, model_keys=keys)
    m = run_measured(cli_command("sync", "-c", config, "--json"), work / "logs", tag)
    m.check(f"shardsync sync ({tag})")
    doc = json.loads(m.stdout.read_text())
    bad = [r for r in doc["models"] if not r["ok"]]
    if bad:
        raise SystemExit(f"shardsync sync ({tag}): models failed: {bad}")
    return m, doc


def curl_config(work: Path, nginx: NginxOrigin, files: list[str], tag: str) -> Path:
    """A curl ``-K`` file fetching every file into a fresh ``work/tag/<i>``; its path."""
    out = work / tag
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = work / f"{tag}.cfg"
    cfg.write_text("".join(f'url = "{nginx.url_for(f)}"\noutput = "{out / str(i)}"\n'
                           for i, f in enumerate(files)))
    return cfg


def run_curl(work: Path, nginx: NginxOrigin, files: list[str]) -> tuple[Measured, Measured]:
    """One curl process fetching every file over one reused connection, then sha256sum."""
    cfg = curl_config(work, nginx, files, "curl")
    curl = run_measured(["curl", "-s", "-f", "-K", str(cfg)], work / "logs", "curl")
    curl.check("curl")
    out = work / "curl"
    sha = run_measured(["sha256sum", *(str(out / str(i)) for i in range(len(files)))],
                       work / "logs", "sha256sum")
    sha.check("sha256sum")
    return curl, sha


def run_curl_parallel(work: Path, nginx: NginxOrigin, files: list[str]) -> Measured:
    """curl fetching 4 files at a time (``--parallel --parallel-max 4``, shardsync's
    default concurrency) to files, then one ``sync``: issue 9's reference, which
    neither hashes nor verifies, and makes the bytes durable once at the end."""
    cfg = curl_config(work, nginx, files, "curlp")
    start = time.perf_counter()
    curl = run_measured(["curl", "-s", "-f", "--parallel", "--parallel-max", "4", "-K",
                         str(cfg)], work / "logs", "curlp")
    curl.check("curl --parallel")
    sync = run_measured(["sync"], work / "logs", "sync")
    sync.check("sync")
    curl.seconds = time.perf_counter() - start
    shutil.rmtree(work / "curlp")
    return curl


def bench_cold(work: Path, nginx: NginxOrigin, manifests: list[str], total: int,
               repeat: int) -> dict:
    files = files_of(nginx.root, manifests)
    refs, syncs, rss, body = [], [], [], []
    curl_t, sha_t, par_t = [], [], []
    for i in range(repeat):
        par_t.append(run_curl_parallel(work, nginx, files).seconds)
        curl, sha = run_curl(work, nginx, files)
        got = sum((work / "curl" / str(k)).stat().st_size for k in range(len(files)))
        assert got == total, f"curl wrote {got} bytes, expected {total}"
        shutil.rmtree(work / "curl")
        curl_t.append(curl.seconds)
        sha_t.append(sha.seconds)
        refs.append(curl.seconds + sha.seconds)
        nginx.clear()
        m, _ = run_sync(work, nginx, manifests, f"cold{i}", fresh=True)
        syncs.append(m.seconds)
        rss.append(m.maxrss_mb)
        body.append(sum(h.body_bytes for h in nginx.hits()))
    shutil.rmtree(work / "sync")
    return {"files": len(files), "ref": statistics.median(refs), "sync": statistics.median(syncs),
            "curl": statistics.median(curl_t), "sha256sum": statistics.median(sha_t),
            "curl_parallel": statistics.median(par_t),
            "rss": max(rss), "body": body}


def bench_warm(work: Path, nginx: NginxOrigin, manifests: list[str], repeat: int,
               public_key: str | None = None) -> dict:
    tag = "warm" if public_key is None else "signed"
    cold, _ = run_sync(work, nginx, manifests, f"{tag}-first", fresh=True,
                       public_key=public_key)
    times, cpu, rss, bodies, statuses, requests = [], [], [], [], set(), []
    for i in range(repeat):
        nginx.clear()
        m, doc = run_sync(work, nginx, manifests, f"{tag}{i}", fresh=False,
                          public_key=public_key)
        assert not any(r["changed"] for r in doc["models"]), "a warm re-sync changed a model"
        hits = nginx.hits()
        times.append(m.seconds)
        cpu.append(m.cpu_seconds)
        rss.append(m.maxrss_mb)
        bodies.append(sum(h.body_bytes for h in hits))
        statuses |= {h.status for h in hits}
        requests.append(len(hits))
    return {"first": cold.seconds, "seconds": statistics.median(times),
            "cpu": statistics.median(cpu), "rss": max(rss),
            "body": max(bodies), "statuses": sorted(statuses), "requests": max(requests)}


def sign_set(work: Path, root: Path, manifests: list[str]) -> str:
    """Sign every model of ``manifests`` with a new key, as a publisher does (``shardsync
    keygen`` once, ``shardsync sign`` per model); return the public key."""
    key = work / "publisher.pem"
    m = run_measured(cli_command("keygen", key), work / "logs", "keygen")
    m.check("shardsync keygen")
    for rel in manifests:
        run_measured(cli_command("sign", "--key", key, root / rel), work / "logs",
                     "sign").check(f"shardsync sign {rel}")
    return m.stdout.read_text().strip()


def startup_seconds(work: Path) -> float:
    """What starting ``shardsync`` costs before any work (``shardsync --version``)."""
    return min(run_measured(cli_command("--version"), work / "logs", "version").seconds
               for _ in range(3))


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total-mib", type=int, default=1024,
                   help="cold sync: size of the model set (default %(default)s)")
    p.add_argument("--shard-mib", type=int, default=CONVERTER_SHARD_SIZE // MiB,
                   help="cold sync: shard size (default %(default)s, the converter's)")
    p.add_argument("--models", type=int, default=4,
                   help="cold sync: models the set is split into (default %(default)s)")
    p.add_argument("--warm-models", type=int, default=100, help="default %(default)s")
    p.add_argument("--warm-shards", type=int, default=10, help="per model, default %(default)s")
    p.add_argument("--warm-shard-kib", type=int, default=16, help="default %(default)s")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each measurement; medians are printed (default %(default)s)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="parent of the temporary directory (default: the system's)")
    p.add_argument("--skip-cold", action="store_true", help="only the warm re-sync")
    p.add_argument("--signed", action="store_true",
                   help="also the warm re-sync of the same models signed (public_keys)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="shardsync-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        root = work / "origin"
        t = time.perf_counter()
        cold_set = [] if args.skip_cold else make_cold_set(
            root, args.total_mib * MiB, args.shard_mib * MiB, args.models)
        warm_set = make_warm_set(root, args.warm_models, args.warm_shards,
                                 args.warm_shard_kib * 1024)
        print(f"# data written in {time.perf_counter() - t:.1f} s under {work}", flush=True)
        with serve_directory(root, work / "nginx") as nginx:
            startup = startup_seconds(work)
            cold = None
            if cold_set:
                total = sum((root / f).stat().st_size for f in files_of(root, cold_set))
                cold = bench_cold(work, nginx, cold_set, total, args.repeat)
            warm = bench_warm(work, nginx, warm_set, args.repeat)
            signed = None
            if args.signed:
                public = sign_set(work, root, warm_set)
                signed = bench_warm(work, nginx, warm_set, args.repeat, public_key=public)

    print(f"shardsync sync benchmarks (nginx on loopback, {os.cpu_count()} CPUs, "
          f"{f'median of {args.repeat} runs' if args.repeat > 1 else 'one run'})")
    print(f"  process start (shardsync --version): {startup:.2f} s")
    if cold is not None:
        ref_rate, sync_rate = total / cold["ref"] / MB, total / cold["sync"] / MB
        curl_rate = total / cold["curl"] / MB
        print(f"cold sync: {total / MiB:.0f} MiB, {cold['files']} files "
              f"({args.models} models, {args.shard_mib} MiB shards)")
        print(f"  curl (one connection) + sha256sum: {cold['ref']:6.2f} s  {ref_rate:6.0f} MB/s"
              f"   (curl alone {cold['curl']:.2f} s = {curl_rate:.0f} MB/s, "
              f"sha256sum {cold['sha256sum']:.2f} s)")
        print(f"  shardsync sync:                    {cold['sync']:6.2f} s  {sync_rate:6.0f} MB/s")
        ratio = sync_rate / ref_rate
        print(f"  ratio shardsync / reference: {ratio:.2f}   (goal >= {GOAL_RATIO})  "
              f"{'ok' if ratio >= GOAL_RATIO else 'MISSED'}")
        print(f"  ratio shardsync / curl alone: {sync_rate / curl_rate:.2f}")
        par_rate = total / cold["curl_parallel"] / MB
        print(f"  curl --parallel-max 4 + sync:      {cold['curl_parallel']:6.2f} s  "
              f"{par_rate:6.0f} MB/s   ratio shardsync / it: {sync_rate / par_rate:.2f}")
        print(f"  body bytes nginx sent to the sync: {max(cold['body'])} "
              f"(the set is {total})")
    print(f"warm re-sync: {args.warm_models} models x {args.warm_shards} shards, nothing changed")
    print(f"  wall time: {warm['seconds']:.2f} s   (goal < {GOAL_WARM_SECONDS} s)  "
          f"{'ok' if warm['seconds'] < GOAL_WARM_SECONDS else 'MISSED'}"
          f"   (its first, cold, sync: {warm['first']:.2f} s)")
    print(f"  CPU time (user + system): {warm['cpu']:.2f} s")
    print(f"  requests: {warm['requests']}, statuses {warm['statuses']}, "
          f"body bytes: {warm['body']}   (goal 0)  {'ok' if warm['body'] == 0 else 'MISSED'}")
    if signed is not None:
        print("warm re-sync of the same models, signed (public_keys, one key)")
        print(f"  wall time: {signed['seconds']:.2f} s   CPU time: {signed['cpu']:.2f} s   "
              f"(its first, cold, sync: {signed['first']:.2f} s)")
        print(f"  requests: {signed['requests']}, statuses {signed['statuses']}, "
              f"body bytes: {signed['body']}")
        print(f"  ratio signed / unsigned: wall {signed['seconds'] / warm['seconds']:.2f}, "
              f"CPU {signed['cpu'] / warm['cpu']:.2f}")
    peak = max(warm["rss"], cold["rss"] if cold else 0.0)
    print("peak RSS of shardsync sync: "
          + (f"cold {cold['rss']:.1f} MB, " if cold else "")
          + f"warm {warm['rss']:.1f} MB   (goal < {GOAL_RSS_MB:.0f} MB)  "
          f"{'ok' if peak < GOAL_RSS_MB else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
