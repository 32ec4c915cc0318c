"""A fleet update, measured: bytes per hop and the time from an origin change to the
last kiosk publishing it (issue 11).

The fleet is the test's (tests/fleet.py, ``gateway_fleet``): origin → gateway (shardsync
run + nginx on its site) → nginx proxy_cache → kiosks (shardsync run), each a network
namespace, every model checked each ``--interval``. Each update replaces one shard at
the origin; the figures are the body bytes every hop carried (nginx's access logs),
the bytes on the wire of each link (veth counters: headers, TCP, ARP and all), and the
seconds until the gateway, then the last kiosk, published the new version.

References, in the same run: the whole model per hop (what a mirror that fetches every
file again would move; the ratio is the fraction of it shardsync moved), a plain
``proxy_cache`` (without docs/fleet.md's two lines, the gateway hop moves every shard of
the new version), and the interval itself (a change is seen within one interval at each
of the two hops).

Run as root (``ip netns``): ``.venv/bin/python bench/fleet_bench.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from fleet import World, gateway_fleet, wait_for  # noqa: E402
from storehelpers import tfjs_model  # noqa: E402

from shardsync.daemon.config import parse_duration  # noqa: E402

__all__ = ["main"]

MiB = 1024 * 1024


def _shard(i: int, size: int, salt: str) -> bytes:
    seed = hashlib.sha256(f"bench {i} {salt}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _wire(w: World) -> dict[str, int]:
    """Bytes on the wire so far, downstream direction of each link."""
    out = {"origin→gateway": w.uplink.bytes_sent()[0], "gateway→cache": w.downlink.bytes_sent()[0]}
    for k, link in zip(w.kiosks, w.kiosk_links, strict=True):
        out[f"cache→{k.host.role}"] = link.bytes_sent()[0]
    return out


def _updates(w: World, n: int, shards: int, size: int) -> list[dict[str, object]]:
    out = []
    for u in range(n):
        v1 = w.gw.version
        marks, wire = w.marks(), _wire(w)
        w.change_shard(f"group1-shard{u % shards + 1}of{shards}.bin",
                       _shard(u % shards, size, f"update {u}"))
        t0 = time.monotonic()
        v2 = wait_for("the gateway publish", lambda v1=v1: (v := w.gw.version) != v1 and v,
                      timeout=120)
        t_gw = time.monotonic() - t0
        for k in w.kiosks:
            wait_for(f"{k.host.role} publish", lambda k=k, v2=v2: k.version == v2, timeout=120)
        t_last = time.monotonic() - t0
        after = _wire(w)
        out.append({"t_gateway": t_gw, "t_last": t_last, "shards": w.hops(marks),
                    "other": w.hops(marks, shards=False),
                    "wire": {h: after[h] - wire[h] for h in after}})
        time.sleep(1.5)  # a quiet check or two between updates
    return out


def _run(args: argparse.Namespace, pass_conditionals: bool,
         updates: int) -> list[dict[str, object]]:
    model = tfjs_model("graph-model", [{f"group1-shard{i + 1}of{args.shards}.bin":
                                        _shard(i, args.shard_size, "v1")
                                        for i in range(args.shards)}])
    with tempfile.TemporaryDirectory() as tmp, gateway_fleet(
            Path(tmp), model, kiosks=args.kiosks, interval=args.interval,
            pass_conditionals=pass_conditionals) as w:
        t0 = time.monotonic()
        v = wait_for("the gateway publish", lambda: w.gw.version, timeout=120)
        for k in w.kiosks:
            wait_for(f"{k.host.role} publish", lambda k=k: k.version == v, timeout=120)
        print(f"  cold: every kiosk published {v} after {time.monotonic() - t0:.1f} s")
        time.sleep(1.5)
        return _updates(w, updates, args.shards, args.shard_size)


def _report(label: str, runs: list[dict[str, object]], model_bytes: int, shard: int) -> None:
    print(f"\n{label}: {len(runs)} updates, one {shard // 1024} KiB shard of a "
          f"{model_bytes / MiB:.1f} MiB model changed in each")
    hops = list(runs[0]["shards"])  # type: ignore[call-overload]
    print(f"  {'hop':<16}{'shard body':>12}{'other body':>12}{'wire':>12}{'vs whole model':>16}")
    for hop in hops:
        body = statistics.median(r["shards"][hop] for r in runs)  # type: ignore[index]
        other = statistics.median(r["other"][hop] for r in runs)  # type: ignore[index]
        wire = statistics.median(r["wire"][hop] for r in runs)  # type: ignore[index]
        print(f"  {hop:<16}{body:>12,.0f}{other:>12,.0f}{wire:>12,.0f}"
              f"{wire / model_bytes:>15.3f}x")
    gw = [r["t_gateway"] for r in runs]
    last = [r["t_last"] for r in runs]
    print(f"  origin change → gateway published: median {statistics.median(gw):.2f} s "
          f"(max {max(gw):.2f}); → last kiosk: median {statistics.median(last):.2f} s "
          f"(max {max(last):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--kiosks", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1 * MiB)
    parser.add_argument("--interval", default="1s")
    args = parser.parse_args()
    model_bytes = args.shards * args.shard_size
    interval = parse_duration(args.interval)
    print(f"fleet: origin → gateway → proxy_cache → {args.kiosks} kiosks, "
          f"{args.shards} × {args.shard_size // 1024} KiB, interval {args.interval}")
    runs = _run(args, True, args.updates)
    _report("cache as docs/fleet.md gives it", runs, model_bytes, args.shard_size)
    last = statistics.median(r["t_last"] for r in runs)  # type: ignore[misc]
    print(f"  last kiosk / interval: {last / interval:.2f} (two hops, each a check away)")
    plain = _run(args, False, 2)
    _report("reference: a plain proxy_cache", plain, model_bytes, args.shard_size)


if __name__ == "__main__":
    main()
