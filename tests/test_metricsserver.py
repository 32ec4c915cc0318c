"""metrics_listen: the real ``shardsync run`` serving GET /metrics over real TCP.

What is scraped is read with prometheus_client's parser, Prometheus' own reading of
the text format; the model metrics are checked against the test origin's request log
and the service's status.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
from origin import Origin
from prometheus_client.parser import text_string_to_metric_families
from servicehelpers import NotifySocket, ServiceProcess, edit_config
from synchelpers import cli_command, publish_on, tfjs_model, write_config

from shardsync.daemon import __version__
from shardsync.daemon.httpserver import Request, Response, Router
from shardsync.daemon.metrics import CONTENT_TYPE
from shardsync.daemon.metricsserver import serve_metrics
from shardsync.store import ShardsyncError

WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, as Prometheus parses the exposition."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_prometheus_scrapes_the_service_over_tcp(
    origin: Origin, tmp_path: Path, sockets: Path, notify: NotifySocket
) -> None:
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x05" * 8192}], tag="a")
    urls = {"a": publish_on(origin, "a", model),
            "gone": origin.url_for("gone/model.json")}  # 404: every check fails
    port = free_port()
    conf = tmp_path / "conf"
    config = write_config(conf, urls, socket=str(sockets / "ctl.sock"),
                          metrics_listen=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    before_start = time.time()
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc, \
            httpx.Client(base_url=base, timeout=WAIT) as http:
        svc.start()
        svc.wait_event("published", model="a")
        svc.wait_event("sync-failed", model="gone")
        status = svc.wait_status(lambda s: all(m["state"] in ("idle", "error")
                                               for m in s["models"]), "all checked")
        a = next(m for m in status["models"] if m["name"] == "a")

        scrape = http.get("/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"] == CONTENT_TYPE
        got = families(scrape.text)
        assert got["shardsync_build_info"] == {(("version", __version__),): 1.0}

        # process_*: this service's own numbers, plausible for a Python process just started.
        assert types(scrape.text)["process_cpu_seconds"] == "counter"
        (cpu,) = got["process_cpu_seconds_total"].values()
        (rss,) = got["process_resident_memory_bytes"].values()
        (vms,) = got["process_virtual_memory_bytes"].values()
        (fds,) = got["process_open_fds"].values()
        (max_fds,) = got["process_max_fds"].values()
        (started,) = got["process_start_time_seconds"].values()
        assert 0 < cpu < 60
        assert 10 << 20 < rss <= vms  # the interpreter alone is over 10 MB resident
        assert 3 < fds < max_fds      # stdio, the sockets, the store's and log's files
        assert before_start - 1.0 <= started <= time.time()

        # The model metrics say what happened: a synced, gone failed.
        def one(name: str, model: str) -> float:
            return got[name][(("model", model),)]

        assert one("shardsync_model_last_check_ok", "a") == 1
        assert one("shardsync_model_last_check_ok", "gone") == 0
        assert one("shardsync_model_errors_total", "gone") >= 1
        assert one("shardsync_model_errors_total", "a") == 0
        assert one("shardsync_model_downloaded_bytes_total", "a") == \
            origin.bytes_sent("a/*.bin") == 8192
        assert one("shardsync_model_last_success_timestamp_seconds", "a") == \
            pytest.approx(a["last_success"], abs=0.01)
        assert one("shardsync_model_last_check_timestamp_seconds", "a") == \
            pytest.approx(a["last_check"], abs=0.01)
        assert ("shardsync_model_last_success_timestamp_seconds" not in got or
                (("model", "gone"),) not in got["shardsync_model_last_success_timestamp_seconds"])
        assert "shardsync_model_up_to_date" not in got  # renamed: it did not mean that

        # The Unix socket serves the same families.
        assert set(families(svc.get_text("/metrics"))) == set(got)

        # Read-only, /metrics alone.
        head = http.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        post = http.post("/metrics")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        for path in ("/v1/status", "/v1/health", "/metrics/", "/"):
            assert http.get(path).status_code == 404, path
        assert http.post("/v1/sync").status_code == 404
        assert http.post("/v1/reload").status_code == 404
        assert http.request("GET", "/metrics", content=b"x" * 100).status_code == 413
        assert svc.status()["models"]  # still serving, nothing was triggered

        # A reload cannot move the listener: it says a restart is needed, the old port serves.
        cursor = svc.last_event_id()
        other = free_port()
        edit_config(config, urls, socket=str(sockets / "ctl.sock"),
                    metrics_listen=f"127.0.0.1:{other}")
        reloaded = svc.wait_event("config-reloaded", since=cursor)
        assert reloaded["needs_restart"] == ["metrics_listen"]
        assert "changing metrics_listen needs a restart" in svc.log()
        assert http.get("/metrics").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{other}/metrics", timeout=WAIT)
        assert svc.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/metrics", timeout=WAIT)  # closed with the service


def test_ipv6_loopback(origin: Origin, tmp_path: Path, sockets: Path,
                       notify: NotifySocket) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))  # CI machines have IPv6 loopback; a skip would prove nothing
        port = s.getsockname()[1]
    config = write_config(tmp_path / "conf", {}, socket=str(sockets / "ctl.sock"),
                          metrics_listen=f"[::1]:{port}")
    with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
        svc.start()
        scrape = httpx.get(f"http://[::1]:{port}/metrics", timeout=WAIT)
        assert scrape.status_code == 200
        assert "shardsync_build_info" in families(scrape.text)
        with pytest.raises(httpx.ConnectError):  # IPv6 only: not on the IPv4 loopback
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT)
        assert svc.stop() == 0


@pytest.mark.parametrize(("value", "why"), [
    ("localhost:9464", "'localhost' is not an IP address"),
    ("127.0.0.1", "an IP address and a port"),
    ("[::1]:99999", "from 1 to 65535"),
])
def test_a_bad_metrics_listen_is_exit_2_naming_the_key(tmp_path: Path, value: str,
                                                        why: str) -> None:
    config = write_config(tmp_path / "conf", {}, metrics_listen=value)
    run = subprocess.run(cli_command("run", "-c", config), capture_output=True, text=True,
                         timeout=WAIT, stdin=subprocess.DEVNULL)
    assert run.returncode == 2, run.stderr
    line = config.read_text().splitlines().index(f'metrics_listen = "{value}"') + 1
    assert f"{config}:{line}: metrics_listen: " in run.stderr and why in run.stderr


def test_a_taken_port_stops_the_start_naming_the_key(tmp_path: Path, sockets: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "conf", {}, socket=str(sockets / "ctl.sock"),
                              metrics_listen=f"127.0.0.1:{port}")
        run = subprocess.run(cli_command("run", "-c", config), capture_output=True, text=True,
                             timeout=WAIT, stdin=subprocess.DEVNULL)
    assert run.returncode == 1, run.stderr
    assert f"metrics_listen: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in run.stderr
    assert not (sockets / "ctl.sock").exists()  # the control socket was cleaned up too


# -- the listener on its own, in-process ---------------------------------------------------


async def test_serve_metrics_serves_the_handler_and_closes_on_cancel() -> None:
    router = Router()

    async def metrics(request: Request) -> Response:
        return Response(200, "m 1\n", CONTENT_TYPE)

    router.add("GET", "/metrics", metrics)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_metrics, ("127.0.0.1", 0), router)
        assert host == "127.0.0.1" and port > 0
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        with trio.fail_after(WAIT):
            while chunk := await stream.receive_some():
                answer += chunk
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nm 1\n")
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)


async def test_a_bind_failure_names_metrics_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ShardsyncError, match=f"metrics_listen: cannot listen on "
                                                 f"127.0.0.1:{port}"):
            await serve_metrics(("127.0.0.1", port), Router())
