"""How close max_rate holds a download to its limit (issue 11: within 10 %).

nginx on loopback serves files of about ``--seconds`` at the limit; the real fetcher
(tuned as the service tunes it: 512 KiB reads) downloads them into a real store
under a global ``max_rate``, under an ``[[origin]]``'s, and two at once under the
global one. The rate is the file's bytes over the wall time from the request to the
commit, as the operator's meter would see it over the download.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
from pathlib import Path

import trio
from nginx import serve_directory
from storehelpers import store_at

from shardsync.daemon.config import Config, parse_config
from shardsync.daemon.fetch import Fetcher
from shardsync.daemon.httpclient import make_client
from shardsync.daemon.ratelimit import RateLimits
from shardsync.daemon.tuning import tune_for_downloads

__all__ = ["main"]

KiB = 1024


async def timed(cfg: Config, urls: list[str], work: Path) -> float:
    """Seconds to download ``urls`` at once under ``cfg``'s limits."""
    rates = RateLimits()
    rates.apply(cfg)
    with store_at(work / "state", work / "site") as store:
        async with make_client() as client:
            f = Fetcher(client, rates=rates)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(lambda u: f.file(u, store), url)
            return trio.current_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    tune_for_downloads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "www"
        for limit in (256 * KiB, 1024 * KiB):
            size = int(limit * args.seconds)
            for name in ("a", "b"):
                (root / str(limit)).mkdir(parents=True, exist_ok=True)
                (root / str(limit) / f"{name}.bin").write_bytes(
                    bytes([ord(name)]) * size)
        with serve_directory(root, Path(tmp) / "nginx") as origin:
            print(f"{'limit':>9}  {'case':<22} {'rate / limit (each run)':<28} median")
            for limit in (256 * KiB, 1024 * KiB):
                a, b = (origin.url_for(f"{limit}/{n}.bin") for n in ("a", "b"))
                cases = {
                    "max_rate": (f"max_rate = {limit}", [a], 1),
                    "[[origin]] max_rate": (f"""
                        [[origin]]
                        prefix = "{origin.url_for(f'{limit}/')}"
                        max_rate = {limit}""", [a], 1),
                    "two at once, max_rate": (f"max_rate = {limit // 2 * 2}", [a, b], 2),
                }
                for case, (text, urls, n) in cases.items():
                    cfg = parse_config(textwrap.dedent(text), path=Path(tmp) / "c.toml")
                    ratios = []
                    for i in range(args.repeat):
                        work = Path(tmp) / f"run-{limit}-{len(ratios)}-{case[:3]}-{i}"
                        seconds = trio.run(timed, cfg, urls, work)
                        ratios.append(n * int(limit * args.seconds) / seconds / limit)
                    runs = " ".join(f"{r:.3f}" for r in ratios)
                    print(f"{limit // KiB:>5} KiB  {case:<22} {runs:<28} "
                          f"{statistics.median(ratios):.3f}", flush=True)


if __name__ == "__main__":
    main()
