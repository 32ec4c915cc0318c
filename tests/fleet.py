"""A fleet on one machine: hosts in network namespaces, joined by veth pairs.

Why namespaces: a gateway feeding kiosks through an HTTP cache is a matter of separate
hosts and links (a link to cut, bytes to count per hop), which 127.0.0.1 cannot show.
Each :class:`Host` is a network namespace the fleet creates (``ip netns add``), with
only its loopback and the veth ends of its :class:`Link`\\ s; every address is inside
those namespaces (``10.231.<link>.1`` and ``.2``), so nothing on the machine's own
network changes. Files are shared (one filesystem): configs, state and sites live in
the test's tmp directory, and a service's control socket, a file, is reached from the
test as usual (:class:`servicehelpers.ServiceProcess` with ``netns``).

Hosts run real programs: nginx (:meth:`Host.nginx`, the same nginx.conf as
``tests/e2e/webserver.py``, listening on the host's link addresses), and
``shardsync run``. HTTP from the test goes through ``curl`` inside a host
(:meth:`Host.get`), as a page on that host would see it.

Used by ``tests/test_fleet.py`` and ``bench/fleet_bench.py``; docs/fleet.md explains
the topology and the HTTP cache's configuration (:func:`cache_server`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from e2e.webserver import START_TIMEOUT, nginx_argv
from servicehelpers import WAIT, NotifySocket, ServiceProcess, short_dir
from storehelpers import ModelFiles, write_model
from synchelpers import origin_server, write_config

from shardsync.daemon.nginx import render_nginx_config

__all__ = ["CACHE_LOG_FORMAT", "Fleet", "Hit", "Host", "Link", "Nginx", "Node", "World",
           "body_bytes", "cache_server", "fleet", "gateway_fleet", "read_hits", "wait_for"]

T = TypeVar("T")

#: The private /16 every fleet's links take their /24s from (one per link).
NET = "10.231"

#: What every nginx of the fleet logs: enough to count body bytes per hop and per host.
CACHE_LOG_FORMAT = ("$remote_addr\t$status\t$body_bytes_sent\t$request_uri\t"
                    "$http_if_none_match\t$upstream_cache_status")
_LOG_LINE = re.compile(r"([^\t]+)\t(\d{3})\t(\d+)\t([^\t]+)\t([^\t]*)\t([^\t]*)")


@dataclass(frozen=True)
class Hit:
    """One request as a fleet nginx logged it."""

    client: str        # the address it came from
    status: int
    body_bytes: int
    uri: str
    if_none_match: str
    cache: str         # $upstream_cache_status: "HIT", "MISS", ... or "-" (no cache)


def read_hits(log: Path) -> list[Hit]:
    """Every request in the access log ``log`` (in :data:`CACHE_LOG_FORMAT`), oldest first."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        m = _LOG_LINE.fullmatch(line)
        assert m, f"unexpected access log line {line!r} in {log}"
        out.append(Hit(m[1], int(m[2]), int(m[3]), m[4], m[5], m[6]))
    return out


@dataclass
class Nginx:
    """An nginx running in a host; :meth:`hits` reads its access log."""

    host: Host
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.dir / "fleet-access.log"

    def hits(self) -> list[Hit]:
        return read_hits(self.log)


@dataclass
class Host:
    """One network namespace of the fleet: ``role`` is its name in the test ("gateway")."""

    fleet: Fleet
    role: str
    ns: str
    addrs: list[str] = field(default_factory=list)

    def argv(self, *argv: str | os.PathLike[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def run(self, *argv: str | os.PathLike[str],
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in this host to the end; AssertionError with its stderr if it fails."""
        done = subprocess.run(self.argv(*argv), capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (
            f"{self.role}: {argv} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        return done

    def get(self, url: str, *headers: str, timeout: float = 30) -> tuple[int, bytes]:
        """GET ``url`` from this host with curl: (status, body); status 0 if no answer."""
        argv = ["curl", "-s", "--max-time", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
        for h in headers:
            argv += ["-H", h]
        done = subprocess.run(self.argv(*argv, url), capture_output=True, timeout=timeout + 10,
                              stdin=subprocess.DEVNULL)
        body, _, code = done.stdout.rpartition(b"\n")
        return int(code or 0), body

    def nginx(self, workdir: Path, server_conf: str, listens: list[str]) -> Nginx:
        """Start nginx in this host with ``server_conf`` (the text of the ``http { }``
        context: server blocks, maps, cache paths), which must listen on ``listens``
        (``addr:port``); return once every one accepts. Stopped when the fleet closes."""
        argv = nginx_argv(workdir)
        (workdir / "server.conf").write_text(server_conf)
        with open(workdir / "stderr.log", "wb") as err:  # nginx holds its own copy
            proc = subprocess.Popen(self.argv(*argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        self.fleet._procs.append(proc)
        server = Nginx(self, workdir, proc)
        probe = " && ".join(
            f"until (exec 3<>/dev/tcp/{a.rpartition(':')[0]}/{a.rpartition(':')[2]}) "
            f"2>/dev/null; do kill -0 {proc.pid} 2>/dev/null || exit 1; sleep 0.02; done"
            for a in listens)
        try:
            self.run("timeout", str(START_TIMEOUT), "bash", "-c", probe, timeout=START_TIMEOUT + 5)
        except AssertionError:
            raise AssertionError(f"nginx in {self.role} did not start:\n"
                                 + (workdir / "stderr.log").read_text(errors="replace")) from None
        return server


@dataclass
class Link:
    """A veth pair between hosts ``a`` (address ``a_addr``) and ``b`` (``b_addr``)."""

    a: Host
    b: Host
    a_if: str
    b_if: str
    a_addr: str
    b_addr: str

    def down(self) -> None:
        """Cut the link (both ends down: each side's connected route goes with it, so a
        connection attempt fails at once with "network unreachable")."""
        self.a.run("ip", "link", "set", self.a_if, "down")
        self.b.run("ip", "link", "set", self.b_if, "down")

    def up(self) -> None:
        self.a.run("ip", "link", "set", self.a_if, "up")
        self.b.run("ip", "link", "set", self.b_if, "up")

    def bytes_sent(self) -> tuple[int, int]:
        """Bytes on the wire so far (Ethernet frames: headers, TCP, ARP and all):
        (from a to b, from b to a), read from a's end."""
        out = self.a.run("ip", "-s", "-j", "link", "show", "dev", self.a_if).stdout
        stats = json.loads(out)[0]["stats64"]
        return stats["tx"]["bytes"], stats["rx"]["bytes"]


class Fleet:
    """Hosts and links, torn down (processes killed, namespaces deleted) by :func:`fleet`."""

    def __init__(self) -> None:
        self.token = f"ss{os.getpid() % 100000}"
        self.hosts: dict[str, Host] = {}
        self.links: list[Link] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def host(self, role: str) -> Host:
        """A new host (network namespace, loopback up) called ``role``."""
        assert role not in self.hosts and re.fullmatch(r"[a-z0-9]{1,10}", role), role
        ns = f"{self.token}-{role}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        h = Host(self, role, ns)
        self.hosts[role] = h
        h.run("ip", "link", "set", "lo", "up")
        return h

    def link(self, a: Host, b: Host) -> Link:
        """Join ``a`` and ``b`` with a veth pair in a /24 of its own; ``a`` gets ``.1``."""
        n = len(self.links) + 1
        tmp_a, tmp_b = f"{self.token}l{n}a", f"{self.token}l{n}b"  # unique while in the root ns
        subprocess.run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b],
                       check=True, capture_output=True)
        link = Link(a, b, f"to-{b.role}", f"to-{a.role}", f"{NET}.{n}.1", f"{NET}.{n}.2")
        for host, tmp, name, addr in ((a, tmp_a, link.a_if, link.a_addr),
                                      (b, tmp_b, link.b_if, link.b_addr)):
            subprocess.run(["ip", "link", "set", tmp, "netns", host.ns], check=True,
                           capture_output=True)
            host.run("ip", "link", "set", tmp, "name", name)
            host.run("ip", "addr", "add", f"{addr}/24", "dev", name)
            host.run("ip", "link", "set", name, "up")
            host.addrs.append(addr)
        self.links.append(link)
        return link

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for h in self.hosts.values():
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)


@contextmanager
def fleet() -> Iterator[Fleet]:
    """A :class:`Fleet` to build; every host and link is gone when the block ends."""
    f = Fleet()
    try:
        yield f
    finally:
        f.close()


def cache_server(*, listen: str, upstream: str, cache_dir: Path | str,
                 log: Path | None = None, location: str = "/models/",
                 pass_conditionals: bool = True) -> str:
    """The nginx ``http { }`` text of an HTTP cache (``proxy_cache``) in front of a
    shardsync site at ``upstream`` (``http://gateway.lan``): docs/fleet.md gives it,
    without ``log`` (an access log in :data:`CACHE_LOG_FORMAT`), and
    tests/test_fleet.py keeps the two equal.

    Beyond a plain proxy_cache, three lines make an update cost each hop only its
    changed shards (docs/fleet.md, "The cache"): the downstream's validators are passed
    upstream on a miss (nginx drops them by default and fetches the whole file, and an
    update moves every shard to a new URL), and a 304 got that way is not stored
    (``proxy_no_cache``): it answers that client's copy, it is no file for the cache.
    ``proxy_cache_lock`` makes kiosks missing the same shard at once wait for one fetch.
    ``pass_conditionals=False`` leaves the three lines out: a plain proxy_cache, for the
    benchmark's comparison.
    """
    log_format = f"log_format fleet escape=none '{CACHE_LOG_FORMAT}';\n" if log else ""
    access_log = f"\n    access_log {log} fleet;" if log else ""
    passing = """
        proxy_set_header If-None-Match $http_if_none_match;
        proxy_set_header If-Modified-Since $http_if_modified_since;
        proxy_no_cache $shardsync_no_store;""" if pass_conditionals else ""
    return f"""\
{log_format}proxy_cache_path {cache_dir} keys_zone=shardsync:10m max_size=16g inactive=30d
                 use_temp_path=off;
map $upstream_status $shardsync_no_store {{
    304     1;
    default 0;
}}
server {{
    listen {listen};{access_log}
    location {location} {{
        proxy_pass {upstream};
        proxy_cache shardsync;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 5m;{passing}
    }}
    location / {{
        return 404;
    }}
}}
"""


# -- the fleet of issue 11: origin, gateway, cache, kiosks -------------------------


def logged_site(site: Path, listen: str, log: Path) -> str:
    """The server block `shardsync nginx-config` prints, with a fleet access log."""
    return (f"log_format fleet escape=none '{CACHE_LOG_FORMAT}';\n"
            f"access_log {log} fleet;\n" + render_nginx_config(site, listen=listen))


class Node:
    """A host running ``shardsync run`` and nginx serving its site."""

    def __init__(self, host: Host, root: Path, sockdir: Path, url: str, listen: str, *,
                 interval: str, mirrors: Sequence[str] = ()) -> None:
        self.host = host
        self.dir = root / host.role
        self.notify = NotifySocket(sockdir / f"{host.role}.notify")
        self.config = write_config(
            self.dir, {"m": url}, socket=str(sockdir / f"{host.role}.sock"), interval=interval,
            model_keys={"m": {"mirrors": list(mirrors)}} if mirrors else None)
        self.service = ServiceProcess(self.config, self.dir / "service.log", notify=self.notify,
                                      netns=host.ns)
        self.listen = listen
        self.web: Nginx | None = None

    def start(self) -> None:
        self.service.start()
        (self.dir / "nginx").mkdir()
        self.web = self.host.nginx(self.dir / "nginx", logged_site(
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


def wait_for(what: str, predicate: Callable[[], T], timeout: float = WAIT) -> T:
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {timeout} s")
        time.sleep(0.05)


def body_bytes(server: Nginx, since: int = 0, *, client: str | None = None,
               shards: bool = True) -> int:
    """Body bytes ``server`` sent after its first ``since`` requests: of shards
    (``.bin``) or of everything else (manifests, entry points), optionally to one client."""
    return sum(h.body_bytes for h in server.hits()[since:]
               if (client is None or h.client == client) and h.uri.endswith(".bin") == shards)


@dataclass
class World:
    """The fleet of issue 11, running (see :func:`gateway_fleet`)."""

    fleet: Fleet
    gw: Node
    kiosks: list[Node]
    origin_web: Nginx
    cache_web: Nginx
    uplink: Link                # origin - gateway
    downlink: Link              # gateway - cache
    kiosk_links: list[Link]     # cache - each kiosk
    root: Path                  # the origin's directory: the model is root/m/
    served: dict[str, bytes]    # what a page must get, by shard file name

    @property
    def cache_addr(self) -> str:
        """The cache's address on its link to the gateway (the gateway's only client)."""
        return self.downlink.b_addr

    def marks(self) -> dict[str, int]:
        """How many requests each hop's nginx has logged so far (for :meth:`hops`)."""
        assert self.gw.web is not None
        return {"origin": len(self.origin_web.hits()), "gateway": len(self.gw.web.hits()),
                "cache": len(self.cache_web.hits())}

    def hops(self, marks: dict[str, int], *, shards: bool = True) -> dict[str, int]:
        """Body bytes each hop carried since ``marks``: shards, or everything else. A
        page's own loads (from its host's nginx) are not on any hop, and not counted."""
        assert self.gw.web is not None
        out = {"origin→gateway": body_bytes(self.origin_web, marks["origin"], shards=shards),
               "gateway→cache": body_bytes(self.gw.web, marks["gateway"],
                                           client=self.cache_addr, shards=shards)}
        for k in self.kiosks:
            out[f"cache→{k.host.role}"] = body_bytes(
                self.cache_web, marks["cache"], client=k.host.addrs[0], shards=shards)
        return out

    def change_shard(self, name: str, data: bytes) -> None:
        """Replace the origin's shard ``name`` by ``data`` (as a publisher does: a new
        file renamed over), with an mtime 10 s on so that nginx's ETag changes even
        within the same second and at the same size."""
        path = self.root / "m" / name
        tmp = path.with_name(".new")
        tmp.write_bytes(data)
        st = path.stat()
        os.utime(tmp, (st.st_atime, st.st_mtime + 10))
        os.replace(tmp, path)
        self.served[name] = data


@contextmanager
def gateway_fleet(tmp_path: Path, model: ModelFiles, *, kiosks: int = 3, interval: str = "1s",
                  pass_conditionals: bool = True,
                  kiosk_mirrors: Sequence[str] = ()) -> Iterator[World]:
    """Origin → gateway → cache → ``kiosks`` kiosks, every one serving, the model ``m``
    (``model``, manifest ``model.json``) not yet synced; torn down on exit.

    The origin is nginx on a plain directory; the gateway runs ``shardsync run`` on the
    origin's URL and nginx on its site as ``shardsync nginx-config`` prints it; the cache
    is :func:`cache_server`; each kiosk runs ``shardsync run`` on the gateway's entry
    point through the cache, and nginx on its own site at 127.0.0.1 (the kiosk's page).
    Every model checks each ``interval``; the kiosks' model has ``kiosk_mirrors``.
    """
    assert os.geteuid() == 0, "a fleet needs root (ip netns): CI runs as root"
    with fleet() as f, short_dir() as sockdir:
        origin, gateway, cache = f.host("origin"), f.host("gateway"), f.host("cache")
        hosts = [f.host(f"kiosk{i + 1}") for i in range(kiosks)]
        uplink, downlink = f.link(origin, gateway), f.link(gateway, cache)
        kiosk_links = [f.link(cache, k) for k in hosts]

        root = tmp_path / "origin-root"
        write_model(root / "m", model)
        web = tmp_path / "origin"
        web.mkdir()
        origin_web = origin.nginx(web, origin_server(
            f"{uplink.a_addr}:80", root, web / "fleet-access.log", CACHE_LOG_FORMAT),
            [f"{uplink.a_addr}:80"])
        web = tmp_path / "cache"
        web.mkdir()
        cache_web = cache.nginx(web, cache_server(
            listen="80", upstream=f"http://{downlink.a_addr}:80", cache_dir=web / "c",
            log=web / "fleet-access.log", pass_conditionals=pass_conditionals),
            [f"{lk.a_addr}:80" for lk in kiosk_links])

        gw = Node(gateway, tmp_path, sockdir, f"http://{uplink.a_addr}/m/model.json",
                  f"{downlink.a_addr}:80", interval=interval)
        nodes = [Node(k, tmp_path, sockdir, f"http://{lk.a_addr}/models/m/model.json",
                      "127.0.0.1:80", interval=interval, mirrors=kiosk_mirrors)
                 for k, lk in zip(hosts, kiosk_links, strict=True)]
        try:
            for n in (gw, *nodes):
                n.start()
            yield World(f, gw, nodes, origin_web, cache_web, uplink, downlink, kiosk_links,
                        root, dict(model.shards))
        finally:
            for n in (gw, *nodes):
                n.close()

