"""What TLS costs a cold sync: the same model through nginx over https and over http.

Issue 10 asks for a cold sync with TLS versus plain HTTP. One nginx serves one
directory on two ports, one with TLS (a server certificate from a CA this script makes,
trusted through an ``[[origin]]`` ``ca_file``), one without; ``shardsync sync`` (a
subprocess, as an operator runs it) fetches the same model from each, cold (a fresh
state and site directory), alternately, ``--repeat`` times. Only the ratio of the two
medians of this one run is meant to be compared (docs/performance.md: the machine is
shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nginx import NginxOrigin  # noqa: F401  (bench/nginx.py: makes tests/ importable)
from synchelpers import cli_command
from tlshelpers import Site, make_pki, serve_sites

from shardsync.daemon.demo.samples import make_big_model

__all__ = ["main"]

MiB = 1024 * 1024
MB = 1_000_000


def cold_sync(work: Path, url: str, origin: str, tag: str) -> float:
    """Wall seconds of one cold ``shardsync sync`` of the model at ``url``."""
    import subprocess

    conf = work / f"conf-{tag}"
    if conf.exists():
        shutil.rmtree(conf)
    conf.mkdir()
    (conf / "shardsync.toml").write_text(
        f'state_dir = "state"\nsite_dir = "site"\nsocket = "ctl.sock"\n{origin}\n'
        f'[[model]]\nname = "big"\nurl = "{url}"\n')
    start = time.perf_counter()
    done = subprocess.run(cli_command("sync", "-c", conf / "shardsync.toml", "--json"),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not json.loads(done.stdout)["models"][0]["ok"]:
        raise SystemExit(f"sync over {url} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    shutil.rmtree(conf)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="model size (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians)")
    parser.add_argument("--workdir", default=None, help="parent of the temporary directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tls-bench-", dir=args.workdir))
    try:
        root = work / "origin"
        sample = make_big_model(root, args.mib * MiB, seed=5, name="big")
        pki = make_pki(work / "pki")
        sites = [Site(), Site(pki.server_cert, pki.server_key)]
        with serve_sites(root, work / "nginx", sites) as (plain, tls):
            origin = f'[[origin]]\nprefix = "{tls.url}/"\nca_file = "{pki.ca}"\n'
            times: dict[str, list[float]] = {"http": [], "https": []}
            for i in range(args.repeat):
                times["http"].append(cold_sync(work, plain.url_for(sample.manifest), "",
                                               f"http{i}"))
                times["https"].append(cold_sync(work, tls.url_for(sample.manifest), origin,
                                                f"https{i}"))
        size = sum(p.stat().st_size for p in (root / "big").rglob("*") if p.is_file())
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in ("http", "https"):
            runs = ", ".join(f"{t:.2f}" for t in times[k])
            print(f"cold sync over {k:5}: {med[k]:.2f} s median of {args.repeat} "
                  f"({size / med[k] / MB:.0f} MB/s; runs {runs})")
        print(f"TLS / plain time: {med['https'] / med['http']:.2f}x "
              f"({size / MiB:.0f} MiB, {json.dumps(sample.manifest)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
