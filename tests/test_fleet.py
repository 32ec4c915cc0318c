"""A fleet in network namespaces: origin → gateway → HTTP cache → three kiosks (issue 11).

The topology (tests/fleet.py builds it; docs/fleet.md explains it):

    origin ──link1── gateway ──link2── cache ──link3── kiosk1
    nginx            shardsync run     nginx  ──link4── kiosk2
                     nginx (its site,  proxy_cache ─link5── kiosk3
                     `shardsync nginx-config`)          each: shardsync run +
                                                         nginx on 127.0.0.1

Every kiosk's model URL is the gateway's entry point, reached through the cache. The
story, one test since each step needs the one before:

1. Cold: every kiosk publishes the gateway's version id, flat, each shard crossing
   each hop once (the cache fills once for three kiosks). Then checks of the unchanged
   model move no body at any hop (304s, entry points included).
2. The gateway's link to the origin is cut: gateway and kiosks keep serving what they
   have; the gateway's status says why (the origin URL, and "timed out" for a request
   on a kept-alive connection or "Network is unreachable" for a new one: the retry in
   progress, then the check's error), the kiosks' checks keep succeeding. Then a
   kiosk's own link: its status says why, its page still loads.
3. Restored, and one shard changed at the origin: every kiosk publishes the gateway's
   new version id, and each hop carries that shard's body and no other shard's.
   The bytes of every hop and the time to the last kiosk are printed
   (bench/fleet_bench.py measures them over several updates).

A second fleet, one kiosk, ties the offline items together: cut off, the kiosk takes
the gateway's update from a USB stick (its ``file://`` mirror), and back online asks
the gateway for the entry point alone.

The fleet needs root (``ip netns``); CI runs as root, so it fails rather than skips
without it.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from fleet import Node, World, cache_server, gateway_fleet, wait_for
from storehelpers import tfjs_model
from synchelpers import run_cli

SHARDS = 4
SHARD_SIZE = 256 * 1024


def _shard(i: int, salt: bytes = b"") -> bytes:
    seed = hashlib.sha256(b"fleet shard %d" % i + salt).digest()
    return (seed * (SHARD_SIZE // len(seed) + 1))[:SHARD_SIZE]


MODEL = tfjs_model("graph-model", [{f"group1-shard{i + 1}of{SHARDS}.bin": _shard(i)
                                    for i in range(SHARDS)}])


def test_a_gateway_feeds_three_kiosks_through_a_cache(tmp_path: Path) -> None:
    # Checks every second (±10 % jitter), so each step takes seconds.
    with gateway_fleet(tmp_path, MODEL, kiosks=3, interval="1s") as w:
        _step1_cold(w)
        _step2_cut(w)
        _step3_update(w)


def _step1_cold(w: World) -> None:
    v1 = wait_for("the gateway publish", lambda: w.gw.version)
    for n in w.kiosks:
        wait_for(f"{n.host.role} publish {v1}", lambda n=n: n.version == v1)
        assert n.page_loads(w.served) == v1
    assert w.gw.page_loads(w.served) == v1
    total = SHARDS * SHARD_SIZE
    # Each shard crossed each hop once: the cache fetched it once for three kiosks.
    assert w.hops(dict.fromkeys(("origin", "gateway", "cache"), 0)) == {
        hop: total for hop in ("origin→gateway", "gateway→cache",
                               *(f"cache→{n.host.role}" for n in w.kiosks))}

    # Checks of an unchanged model are 304s at every hop, entry points included.
    marks, quiet = w.marks(), time.time()
    for n in (w.gw, *w.kiosks):
        wait_for(f"{n.host.role} check twice",
                 lambda n=n: (n.service.model("m")["last_success"] or 0) >= quiet + 1.5)
    moved = {**w.hops(marks), **{f"{h} (not shards)": b
                                 for h, b in w.hops(marks, shards=False).items()}}
    assert moved == dict.fromkeys(moved, 0), moved


#: What a cut link looks like from its end: a request on a kept-alive connection times
#: out (its packets go nowhere), a new connection finds no route.
_CUT = re.compile(r"timed out \(ReadTimeout\)|connection failed: .*\(Network is unreachable\)")


def _why(node: Node, url: str) -> str | None:
    """What ``node``'s status says is failing, once it names ``url``: the retry in
    progress (at once) or the check's error (once the fetcher gave up, ~30 s later)."""
    m = node.service.model("m")
    said = m["last_error"] or (m["retrying"] and f"{m['retrying']['file']}: "
                                                 f"{m['retrying']['error']}")
    return said if said and url in said else None


def _step2_cut(w: World) -> None:
    gw, v1 = w.gw, w.gw.version
    w.uplink.down()
    cut = time.time()
    origin_url = f"http://{w.uplink.a_addr}/m/model.json"
    error = wait_for("the gateway's status say why", lambda: _why(gw, origin_url))
    assert _CUT.search(error), error
    assert gw.version == v1 and gw.page_loads(w.served) == v1
    for n in w.kiosks:  # they check the gateway, which answers: all is well there
        wait_for(f"{n.host.role} check after the cut",
                 lambda n=n: (n.service.model("m")["last_success"] or 0) >= cut + 1.5)
        m = n.service.model("m")
        assert m["last_error"] is None and m["retrying"] is None and m["version"] == v1, m
        assert n.page_loads(w.served) == v1

    # A kiosk cut from the cache says so, and its page still loads.
    kiosk, link = w.kiosks[2], w.kiosk_links[2]
    link.down()
    error = wait_for("the cut kiosk's status say why",
                     lambda: _why(kiosk, f"http://{link.a_addr}/models/m/model.json"))
    assert _CUT.search(error), error
    assert kiosk.version == v1 and kiosk.page_loads(w.served) == v1


def _step3_update(w: World) -> None:
    gw, v1 = w.gw, w.gw.version
    w.uplink.up()
    w.kiosk_links[2].up()
    back = time.time()
    for n in (gw, w.kiosks[2]):  # the retry in progress gets through, or the next check
        wait_for(f"{n.host.role} check succeed again",
                 lambda n=n: (n.service.model("m")["last_success"] or 0) >= back)
    marks = w.marks()
    changed = f"group1-shard2of{SHARDS}.bin"
    w.change_shard(changed, _shard(1, b"v2"))
    t0 = time.monotonic()

    v2 = wait_for("the gateway publish the change", lambda: (v := gw.version) != v1 and v)
    t_gateway = time.monotonic() - t0
    for n in w.kiosks:
        wait_for(f"{n.host.role} publish {v2}", lambda n=n: n.version == v2)
    t_last = time.monotonic() - t0
    for n in (gw, *w.kiosks):
        assert n.page_loads(w.served) == v2

    # Each hop carried the changed shard's body once per host behind it, and no other.
    shards = w.hops(marks)
    assert shards == dict.fromkeys(shards, SHARD_SIZE), shards
    print(f"\nfleet update, one {SHARD_SIZE}-byte shard of {SHARDS} changed: shard body bytes"
          f" per hop {shards}, other body bytes {w.hops(marks, shards=False)};"
          f" gateway published after {t_gateway:.1f} s, last kiosk after {t_last:.1f} s")


def test_a_kiosk_cut_off_takes_the_update_from_a_usb_stick_and_then_asks_the_gateway_nothing(
    tmp_path: Path
) -> None:
    """Issue 11's items together: a kiosk whose link is down falls back to its mirror,
    a USB stick (``file://``) holding what ``shardsync export`` wrote on the gateway;
    it publishes the gateway's version id from it, and once back on the network its
    checks of the gateway cost the entry point alone, no shard."""
    stick = tmp_path / "stick"
    with gateway_fleet(tmp_path, MODEL, kiosks=1, interval="1s",
                       kiosk_mirrors=[f"file://{stick}/m/model.json"]) as w:
        gw, (kiosk,) = w.gw, w.kiosks
        v1 = wait_for("the gateway publish", lambda: gw.version)
        wait_for("the kiosk publish", lambda: kiosk.version == v1)

        w.kiosk_links[0].down()
        w.change_shard(f"group1-shard3of{SHARDS}.bin", _shard(2, b"usb"))
        v2 = wait_for("the gateway publish the change", lambda: (v := gw.version) != v1 and v)
        done = run_cli("export", "-c", gw.config, stick)
        assert done.returncode == 0, done.stdout + done.stderr

        # The gateway is out of reach (~30 s of retries), then the stick serves.
        wait_for("the kiosk publish from the stick", lambda: kiosk.version == v2, timeout=180)
        m = kiosk.service.model("m")
        assert m["source"] == f"file://{stick}/m/model.json", m
        assert kiosk.page_loads(w.served) == v2

        w.kiosk_links[0].up()
        marks, back = w.marks(), time.time()
        wait_for("the kiosk check the gateway twice",
                 lambda: (kiosk.service.model("m")["last_success"] or 0) >= back + 1.5)
        asked = {h.uri for h in w.cache_web.hits()[marks["cache"]:]}
        assert asked == {"/models/m/model.json"}, asked
        assert kiosk.version == v2 and kiosk.service.model("m")["last_error"] is None


def test_docs_give_the_cache_config_the_fleet_runs() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", doc, re.DOTALL)
    assert blocks == [cache_server(listen="80", upstream="http://gateway.lan",
                                   cache_dir="/var/cache/nginx/shardsync")]
