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
   each hop once (the cache fills once for three kiosks).
2. The gateway's link to the origin is cut: gateway and kiosks keep serving what they
   have; the gateway's status says why (the origin URL, unreachable), the kiosks'
   checks keep succeeding. Then a kiosk's own link: its status says why, its page
   still loads.
3. Restored, and one shard changed at the origin: every kiosk publishes the gateway's
   new version id, and each hop carries that shard's body and no other shard's.
   The bytes of every hop and the time to the last kiosk are printed
   (bench/fleet_bench.py measures them over several updates).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleet import CACHE_LOG_FORMAT, Fleet, Host, Link, Nginx, cache_server, fleet
from servicehelpers import WAIT, NotifySocket, ServiceProcess, short_dir
from storehelpers import tfjs_model, write_model
from synchelpers import write_config

from shardsync.daemon.nginx import render_nginx_config

SHARDS = 4
SHARD_SIZE = 256 * 1024
INTERVAL = "1s"  # checks every second (±10 % jitter), so each step takes seconds


def _shard(i: int, salt: bytes = b"") -> bytes:
    seed = hashlib.sha256(b"fleet shard %d" % i + salt).digest()
    return (seed * (SHARD_SIZE // len(seed) + 1))[:SHARD_SIZE]


MODEL = tfjs_model("graph-model", [{f"group1-shard{i + 1}of{SHARDS}.bin": _shard(i)
                                    for i in range(SHARDS)}])


def _logged_site(site: Path, listen: str, log: Path) -> str:
    """The server block `shardsync nginx-config` prints, with a fleet access log."""
    return (f"log_format fleet escape=none '{CACHE_LOG_FORMAT}';\n"
            f"access_log {log} fleet;\n" + render_nginx_config(site, listen=listen))


class Node:
    """A host running ``shardsync run`` and nginx serving its site."""

    def __init__(self, host: Host, root: Path, sockdir: Path, url: str, listen: str) -> None:
        self.host = host
        self.dir = root / host.role
        self.notify = NotifySocket(sockdir / f"{host.role}.notify")
        config = write_config(self.dir, {"m": url}, socket=str(sockdir / f"{host.role}.sock"),
                              interval=INTERVAL)
        self.service = ServiceProcess(config, self.dir / "service.log", notify=self.notify,
                                      netns=host.ns)
        self.listen = listen
        self.web: Nginx | None = None

    def start(self) -> None:
        self.service.start()
        (self.dir / "nginx").mkdir()
        self.web = self.host.nginx(self.dir / "nginx", _logged_site(
            self.dir / "site", self.listen, self.dir / "nginx" / "fleet-access.log"),
            [self.listen])

    def close(self) -> None:
        self.service.close()
        self.notify.close()

    @property
    def version(self) -> str | None:
        return self.service.model("m")["version"]

    def page_loads(self, shards: dict[str, bytes]) -> str:
        """What a page on this host loads from its own nginx: the version the entry point
        pins, after checking that every shard it names is served with the bytes
        ``shards`` gives for its file name."""
        base = f"http://{self.listen}/models/m/"
        status, entry = self.host.get(base + "model.json")
        assert status == 200, f"{self.host.role}: entry point answered {status}"
        paths = [p for g in json.loads(entry)["weightsManifest"] for p in g["paths"]]
        versions = {p.split("/")[1] for p in paths}
        assert len(versions) == 1 and all(p.startswith("versions/") for p in paths), paths
        for p in paths:
            status, body = self.host.get(base + p)
            assert status == 200, f"{self.host.role}: {p} answered {status}"
            assert body == shards[p.rsplit("/", 1)[1]], f"{self.host.role}: {p} is not the model's"
        return versions.pop()


def _wait(what: str, predicate, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {timeout} s")
        time.sleep(0.05)


def _body_bytes(server: Nginx, since: int, *, client: str | None = None,
                shards: bool = True) -> int:
    """Body bytes nginx sent after its first ``since`` requests: of shards (``.bin``) or
    of everything else, optionally to one client."""
    return sum(h.body_bytes for h in server.hits()[since:]
               if (client is None or h.client == client) and h.uri.endswith(".bin") == shards)


@dataclass
class World:
    """The running fleet, as the steps use it."""

    gw: Node
    nodes: list[Node]
    origin_web: Nginx
    cache_web: Nginx
    cache_addr: str             # the cache's address on its link to the gateway
    uplink: Link                # origin - gateway
    kiosk_link: Link            # cache - kiosk3, cut in step 2
    root: Path                  # the origin's directory
    served: dict[str, bytes]    # what a page must get, by file name


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Fleet, Path]]:
    assert os.geteuid() == 0, "the fleet test needs root (ip netns): CI runs as root"
    with fleet() as f, short_dir() as sockdir:
        yield f, sockdir


def test_a_gateway_feeds_three_kiosks_through_a_cache(net: tuple[Fleet, Path],
                                                      tmp_path: Path) -> None:
    f, sockdir = net
    origin, gateway, cache = f.host("origin"), f.host("gateway"), f.host("cache")
    kiosks = [f.host(f"kiosk{i}") for i in (1, 2, 3)]
    uplink = f.link(origin, gateway)
    f.link(gateway, cache)
    kiosk_links = [f.link(cache, k) for k in kiosks]

    # The origin: nginx serving a plain TF.js directory.
    root = tmp_path / "origin-root"
    write_model(root / "m", MODEL)
    (tmp_path / "origin").mkdir()
    origin_log = tmp_path / "origin" / "fleet-access.log"
    origin_web = origin.nginx(tmp_path / "origin", f"""\
log_format fleet escape=none '{CACHE_LOG_FORMAT}';
server {{
    listen {uplink.a_addr}:80;
    root {root};
    access_log {origin_log} fleet;
    types {{ application/json json; }}
    default_type application/octet-stream;
    location / {{ }}
}}
""", [f"{uplink.a_addr}:80"])

    gw = Node(gateway, tmp_path, sockdir, f"http://{uplink.a_addr}/m/model.json",
              f"{f.links[1].a_addr}:80")
    (tmp_path / "cache").mkdir()
    cache_web = cache.nginx(tmp_path / "cache", cache_server(
        listen="80", upstream=f"http://{f.links[1].a_addr}:80", cache_dir=tmp_path / "cache/c",
        log=tmp_path / "cache" / "fleet-access.log"), [f"{lk.a_addr}:80" for lk in kiosk_links])
    nodes = [Node(k, tmp_path, sockdir, f"http://{lk.a_addr}/models/m/model.json",
                  "127.0.0.1:80") for k, lk in zip(kiosks, kiosk_links, strict=True)]
    try:
        gw.start()
        for n in nodes:
            n.start()
        w = World(gw, nodes, origin_web, cache_web, f.links[1].b_addr, uplink, kiosk_links[2],
                  root, dict(MODEL.shards))
        _step1_cold(w)
        _step2_cut(w)
        _step3_update(w)
    finally:
        for n in (gw, *nodes):
            n.close()


def _step1_cold(w: World) -> None:
    gw, nodes, served = w.gw, w.nodes, w.served
    v1 = _wait("the gateway publish", lambda: gw.version)
    for n in nodes:
        _wait(f"{n.host.role} publish {v1}", lambda n=n: n.version == v1)
        assert n.page_loads(served) == v1
    assert gw.page_loads(served) == v1
    total = SHARDS * SHARD_SIZE
    assert _body_bytes(w.origin_web, 0) == total
    assert gw.web is not None
    assert _body_bytes(gw.web, 0, client=w.cache_addr) == total, "the cache fetched a shard twice"
    for n in nodes:
        assert _body_bytes(w.cache_web, 0, client=n.host.addrs[0]) == total


def _step2_cut(w: World) -> None:
    gw, nodes, served = w.gw, w.nodes, w.served
    v1 = gw.version
    w.uplink.down()
    cut = time.time()

    def failed_since_cut() -> str | None:
        m = gw.service.model("m")
        return m["last_error"] if m["last_error"] and (m["last_check"] or 0) >= cut else None
    error = _wait("the gateway's check fail", failed_since_cut)
    assert "http://10.231.1.1/m/model.json" in error and "unreachable" in error.lower(), error
    assert gw.version == v1 and gw.page_loads(served) == v1
    for n in nodes:  # kiosks check the gateway, which answers: all is well
        _wait(f"{n.host.role} check after the cut",
              lambda n=n: (n.service.model("m")["last_success"] or 0) >= cut + 1.5)
        m = n.service.model("m")
        assert m["last_error"] is None and m["version"] == v1, m
        assert n.page_loads(served) == v1

    # A kiosk cut from the cache says so, and its page still loads.
    kiosk = nodes[2]
    w.kiosk_link.down()
    cut = time.time()

    def kiosk_failed() -> str | None:
        m = kiosk.service.model("m")
        return m["last_error"] if m["last_error"] and (m["last_check"] or 0) >= cut else None
    error = _wait("the cut kiosk's check fail", kiosk_failed)
    assert f"http://{w.kiosk_link.a_addr}/models/m/model.json" in error, error
    assert "unreachable" in error.lower(), error
    assert kiosk.version == v1 and kiosk.page_loads(served) == v1


def _step3_update(w: World) -> None:
    gw, nodes, served, origin_web, cache_web = w.gw, w.nodes, w.served, w.origin_web, w.cache_web
    v1 = gw.version
    w.uplink.up()
    w.kiosk_link.up()
    for n in (gw, nodes[2]):
        _wait(f"{n.host.role} check succeed again",
              lambda n=n: n.service.model("m")["last_error"] is None)
    assert gw.web is not None
    marks = {"origin": len(origin_web.hits()), "gateway": len(gw.web.hits()),
             "cache": len(cache_web.hits())}

    # One shard changes at the origin: same size, new bytes (a new file renamed over).
    changed = f"group1-shard2of{SHARDS}.bin"
    new = _shard(1, b"v2")
    path = w.root / "m" / changed
    tmp = path.with_name(".new")
    tmp.write_bytes(new)
    st = path.stat()
    os.utime(tmp, (st.st_atime, st.st_mtime + 10))  # a new ETag even within the same second
    os.replace(tmp, path)
    served[changed] = new
    t0 = time.monotonic()

    v2 = _wait("the gateway publish the change", lambda: (v := gw.version) != v1 and v)
    t_gateway = time.monotonic() - t0
    for n in nodes:
        _wait(f"{n.host.role} publish {v2}", lambda n=n: n.version == v2)
    t_last = time.monotonic() - t0
    for n in (gw, *nodes):
        assert n.page_loads(served) == v2

    origin_shards = _body_bytes(origin_web, marks["origin"])
    gateway_shards = _body_bytes(gw.web, marks["gateway"], client=w.cache_addr)
    assert origin_shards == SHARD_SIZE, f"origin → gateway moved {origin_shards} shard bytes"
    assert gateway_shards == SHARD_SIZE, f"gateway → cache moved {gateway_shards} shard bytes"
    per_kiosk = {n.host.role: _body_bytes(cache_web, marks["cache"], client=n.host.addrs[0])
                 for n in nodes}
    assert per_kiosk == {n.host.role: SHARD_SIZE for n in nodes}, per_kiosk
    print(f"\nfleet update: one {SHARD_SIZE}-byte shard of {SHARDS}; shard body bytes per hop:"
          f" origin→gateway {origin_shards}, gateway→cache {gateway_shards},"
          f" cache→kiosks {per_kiosk}; other body bytes: origin→gateway"
          f" {_body_bytes(origin_web, marks['origin'], shards=False)}, gateway→cache"
          f" {_body_bytes(gw.web, marks['gateway'], client=w.cache_addr, shards=False)},"
          f" cache→kiosks"
          f" {_body_bytes(cache_web, marks['cache'], shards=False)};"
          f" gateway published after {t_gateway:.1f} s, last kiosk after {t_last:.1f} s")
