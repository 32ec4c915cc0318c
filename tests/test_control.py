"""The control socket and its client, on real Unix sockets, with curl, httpx and raw bytes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from types import SimpleNamespace

import h11
import httpx
import pytest
import trio
import trio.testing

from shardsync.daemon.client import ControlClient, get_json, post_json
from shardsync.daemon.control import (
    IDLE_TIMEOUT,
    SOCKET_MODE,
    HTTPError,
    Request,
    Response,
    Router,
    activation_socket,
    serve_control,
)
from shardsync.daemon.events import EventLog
from shardsync.daemon.metrics import CONTENT_TYPE
from shardsync.store.errors import LockedError, NotFoundError, ShardsyncError

# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def sockdir():
    # Short on purpose: a Unix socket path must fit in 107 bytes, pytest's tmp_path may not.
    d = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class App:
    """A router like the service's, with a gate a long-poll handler waits on."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.router = r = Router()

        @r.route("GET", "/v1/status")
        async def status(request: Request) -> Response:
            return Response(200, {"ok": True, "query": dict(request.query)})

        @r.route("GET", "/v1/models/{name}")
        async def model(request: Request) -> Response:
            return Response(200, {"name": request.params["name"]})

        @r.route("POST", "/v1/models/{name}/sync")
        async def sync(request: Request) -> Response:
            return Response(202, {"name": request.params["name"], "body": request.json()})

        @r.route("GET", "/boom")
        async def boom(request: Request) -> Response:
            raise RuntimeError("kaput")

        @r.route("GET", "/teapot")
        async def teapot(request: Request) -> Response:
            raise HTTPError(418, "short and stout")

        @r.route("GET", "/wait")
        async def wait(request: Request) -> Response:
            await self.gate.wait()
            return Response(200, {"woke": True})

        @r.route("GET", "/metrics")
        async def metrics(request: Request) -> Response:
            return Response(200, "up 1\n", CONTENT_TYPE)


async def start_server(nursery, path, **kwargs):
    app = App()
    address = await nursery.start(lambda task_status: serve_control(
        path, app.router, environ={}, task_status=task_status, **kwargs))
    return SimpleNamespace(path=path, app=app, address=address)


@pytest.fixture
async def served(nursery, sockdir):
    return await start_server(nursery, os.path.join(sockdir, "control.sock"))


async def curl(path, url, *args, check=True):
    proc = await trio.run_process(
        ["curl", "-sS", "--unix-socket", path, "-w", "\n%{http_code}", *args, url],
        capture_stdout=True, capture_stderr=True, check=check,
    )
    body, _, code = proc.stdout.decode().rpartition("\n")
    return int(code or 0), body, proc


async def read_until_eof(stream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass  # ECONNRESET after the answer: the server closed with our bytes unread
    return data


class RawHTTP:
    """An h11 client on a raw stream, to see exactly what the server does on one connection."""

    def __init__(self, stream):
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, method, target, headers=(), body=b""):
        hdrs = [("host", "localhost"), *headers]
        if body:
            hdrs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def response(self):
        status, headers, body = None, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return status, headers, body


# ---------------------------------------------------------------- requests through curl and httpx


async def test_curl_gets_status(served):
    code, body, _ = await curl(served.path, "http://localhost/v1/status?since=4&x=%C3%A9")
    assert code == 200
    assert json.loads(body) == {"ok": True, "query": {"since": "4", "x": "é"}}
    assert served.address == served.path


async def test_curl_posts_json_to_a_path_with_a_parameter(served):
    code, body, _ = await curl(served.path, "http://localhost/v1/models/face%2Dapi/sync",
                               "-X", "POST", "-H", "content-type: application/json",
                               "-d", '{"force": true}')
    assert code == 202
    assert json.loads(body) == {"name": "face-api", "body": {"force": True}}


async def test_curl_large_body_with_expect_100_continue(served):
    # curl sends "Expect: 100-continue" above 1 KiB and waits for the 100 before the body.
    payload = json.dumps({"pad": "x" * 5000})
    code, body, _ = await curl(served.path, "http://localhost/v1/models/m/sync", "-d", payload)
    assert code == 202 and json.loads(body)["body"]["pad"] == "x" * 5000


async def test_curl_errors_are_json(served):
    code, body, _ = await curl(served.path, "http://localhost/nowhere")
    assert code == 404 and "no such resource" in json.loads(body)["error"]
    code, body, proc = await curl(served.path, "http://localhost/v1/status", "-X", "DELETE", "-i")
    assert code == 405
    assert "\r\nallow: GET, HEAD\r\n" in body
    code, body, _ = await curl(served.path, "http://localhost/teapot")
    assert code == 418 and json.loads(body) == {"error": "short and stout"}


async def test_head_answers_headers_only(served):
    _, get_body, _ = await curl(served.path, "http://localhost/v1/status")
    code, head, _ = await curl(served.path, "http://localhost/v1/status", "-I")
    assert code == 200
    # The GET answer's length, but no body: the head ends with the blank line.
    assert f"content-length: {len(get_body.encode())}\r\n" in head
    assert head.endswith("\r\n\r\n")


async def test_metrics_content_type(served):
    code, body, _ = await curl(served.path, "http://localhost/metrics", "-i")
    assert code == 200
    assert f"content-type: {CONTENT_TYPE}" in body
    assert body.endswith("up 1\n")


async def test_httpx_async_client_keeps_the_connection(served):
    transport = httpx.AsyncHTTPTransport(uds=served.path)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        first = await client.get("/v1/models/a")
        second = await client.get("/v1/models/b")
        assert first.json() == {"name": "a"} and second.json() == {"name": "b"}
        assert first.headers["content-type"] == "application/json"
        assert first.headers.get("connection") is None


async def test_handler_exception_is_a_logged_500_and_the_server_carries_on(served, caplog):
    with caplog.at_level(logging.ERROR, logger="shardsync.daemon.control"):
        code, body, _ = await curl(served.path, "http://localhost/boom")
    assert code == 500
    assert json.loads(body) == {"error": "internal error: RuntimeError: kaput"}
    assert "GET /boom failed" in caplog.text and "kaput" in caplog.text
    code, _, _ = await curl(served.path, "http://localhost/v1/status")
    assert code == 200


async def test_handler_returning_a_non_response_is_a_500(nursery, sockdir):
    async def bad(request):
        return {"not": "a Response"}

    path = os.path.join(sockdir, "c.sock")
    await nursery.start(lambda task_status: serve_control(path, bad, environ={},
                                                          task_status=task_status))
    code, body, _ = await curl(path, "http://localhost/x")
    assert code == 500 and "not a Response" in json.loads(body)["error"]


async def test_events_long_poll_over_the_socket_wakes_on_append(nursery, sockdir, tmp_path):
    # The pieces as the service will wire them: an EventLog behind GET /v1/events.
    log = EventLog.open(tmp_path / "events.jsonl")
    log.append("started")
    parked = trio.Event()
    router = Router()

    @router.route("GET", "/v1/events")
    async def events(request: Request) -> Response:
        since = request.query_int("since", 0, minimum=0)
        timeout = request.query_float("timeout", 25.0, minimum=0, maximum=600)
        if since >= log.last_id:
            parked.set()
        return Response(200, (await log.wait_since(since, timeout)).to_json())

    path = os.path.join(sockdir, "c.sock")
    await nursery.start(lambda task_status: serve_control(path, router, environ={},
                                                          task_status=task_status))
    code, body, _ = await curl(path, "http://localhost/v1/events?since=0")
    assert code == 200 and [e["type"] for e in json.loads(body)["events"]] == ["started"]
    results = []

    async def poll():
        results.append(await curl(path, "http://localhost/v1/events?since=1&timeout=600"))

    async with trio.open_nursery() as inner:
        inner.start_soon(poll)
        await parked.wait()
        log.append("published", model="m", version="3f2a")
    code, body, _ = results[0]
    answer = json.loads(body)
    assert code == 200 and answer["next"] == 2 and answer["truncated"] is False
    assert answer["events"][0]["type"] == "published" and answer["events"][0]["model"] == "m"
    log.close()


# ---------------------------------------------------------------- raw HTTP/1.1 behaviour


async def test_keep_alive_serves_several_requests_on_one_connection(served):
    stream = await trio.open_unix_socket(served.path)
    raw = RawHTTP(stream)
    for name in ("a", "b", "c"):
        await raw.send("GET", f"/v1/models/{name}")
        status, _, body = await raw.response()
        assert status == 200 and json.loads(body) == {"name": name}
    await raw.send("GET", "/v1/status", headers=[("connection", "close")])
    status, headers, _ = await raw.response()
    assert status == 200 and headers["connection"] == "close"
    assert await stream.receive_some(10) == b""  # the server closed after that answer
    await stream.aclose()


async def test_pipelined_requests_are_answered_in_order(served):
    stream = await trio.open_unix_socket(served.path)
    await stream.send_all(b"GET /v1/models/x HTTP/1.1\r\nhost: l\r\n\r\n"
                          b"GET /v1/models/y HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b'{"name":"x"}') < data.index(b'{"name":"y"}')


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\ncontent-length: x\r\n\r\n",
])
async def test_malformed_request_is_400_and_closed(served, garbage):
    stream = await trio.open_unix_socket(served.path)
    await stream.send_all(garbage)
    data = await read_until_eof(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head.lower()
    assert "bad request" in json.loads(body)["error"]


async def test_bad_target_and_bad_query_are_400(served):
    for target in (b"*", b"/v1/status?x=%ff"):
        stream = await trio.open_unix_socket(served.path)
        await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nhost: l\r\n\r\n")
        assert (await read_until_eof(stream)).startswith(b"HTTP/1.1 400 ")
    code, body, _ = await curl(served.path, "http://localhost/v1/models/%ff")
    assert code == 400 and "UTF-8" in json.loads(body)["error"]
    code, body, _ = await curl(served.path, "http://localhost/v1/models/a/sync", "-d", "{nope")
    assert code == 400 and "not valid JSON" in json.loads(body)["error"]


async def test_oversized_headers_are_refused(served):
    stream = await trio.open_unix_socket(served.path)
    # Never finished, and already past the 16 KiB a request head may take.
    await stream.send_all(b"GET /v1/status HTTP/1.1\r\nhost: l\r\nx-big: " + b"a" * 20000)
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 431 ")


async def test_body_over_the_cap_is_413(nursery, sockdir):
    server = await start_server(nursery, os.path.join(sockdir, "c.sock"), max_body=100)
    ok = json.dumps({"x": "y" * 50})
    code, _, _ = await curl(server.path, "http://localhost/v1/models/m/sync", "-d", ok)
    assert code == 202
    # Declared too large: refused before the body is read, and before any 100 Continue.
    stream = await trio.open_unix_socket(server.path)
    await stream.send_all(b"POST /v1/models/m/sync HTTP/1.1\r\nhost: l\r\n"
                          b"content-length: 5000\r\nexpect: 100-continue\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data
    # Chunked, so the size shows only while reading.
    stream = await trio.open_unix_socket(server.path)
    chunk = b"{" + b" " * 198 + b"}"
    await stream.send_all(b"POST /v1/models/m/sync HTTP/1.1\r\nhost: l\r\n"
                          b"transfer-encoding: chunked\r\n\r\n"
                          + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert "too large" in json.loads(data.partition(b"\r\n\r\n")[2])["error"]


async def test_expect_100_continue_is_answered_before_the_body(served):
    stream = await trio.open_unix_socket(served.path)
    body = b'{"a": 1}'
    await stream.send_all(b"POST /v1/models/m/sync HTTP/1.1\r\nhost: l\r\n"
                          b"content-length: %d\r\nexpect: 100-continue\r\n\r\n" % len(body))
    interim = await stream.receive_some(65536)
    assert interim.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(body)
    raw = RawHTTP(stream)
    raw.conn.send(h11.Request(method="POST", target="/", headers=[("host", "l")]))
    raw.conn.send(h11.EndOfMessage())
    status, _, answer = await raw.response()
    assert status == 202 and json.loads(answer)["body"] == {"a": 1}


async def test_idle_connection_is_closed_after_the_timeout(served, autojump_clock):
    silent = await trio.open_unix_socket(served.path)
    partial = await trio.open_unix_socket(served.path)
    await partial.send_all(b"GET /v1/status HTTP/1.1\r\nhost: l\r\n")  # never finished
    start = trio.current_time()
    assert await silent.receive_some(10) == b""
    assert await partial.receive_some(10) == b""
    assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT)


async def test_idle_timeout_counts_from_the_last_answer(served, autojump_clock):
    stream = await trio.open_unix_socket(served.path)
    raw = RawHTTP(stream)
    await trio.sleep(IDLE_TIMEOUT * 0.9)
    await raw.send("GET", "/v1/status")
    assert (await raw.response())[0] == 200
    answered = trio.current_time()
    assert await stream.receive_some(10) == b""
    assert trio.current_time() - answered == pytest.approx(IDLE_TIMEOUT)


async def test_long_poll_does_not_hold_up_other_connections(served):
    results = []

    async def long_poll():
        results.append(await curl(served.path, "http://localhost/wait"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_poll)
        # Several requests are served while the long-poll is parked in its handler.
        for _ in range(3):
            code, _, _ = await curl(served.path, "http://localhost/v1/status")
            assert code == 200
        assert results == []
        served.app.gate.set()
    assert results[0][:2] == (200, '{"woke":true}\n')


# ---------------------------------------------------------------- the socket file


@pytest.mark.parametrize("umask", [0o000, 0o077])
async def test_socket_is_mode_0660_whatever_the_umask(sockdir, umask):
    path = os.path.join(sockdir, "control.sock")
    old = os.umask(umask)
    try:
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path)
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == SOCKET_MODE == 0o660
            nursery.cancel_scope.cancel()
    finally:
        os.umask(old)


async def test_only_owner_and_group_may_connect(served):
    assert os.geteuid() == 0, "this test switches users with setpriv; run it as root, as CI does"
    os.chmod(os.path.dirname(served.path), 0o711)  # mkdtemp's 0700 would refuse everyone
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    refused = await trio.run_process(
        [*as_nobody, "curl", "-sS", "--unix-socket", served.path, "http://localhost/v1/status"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert refused.returncode == 7  # curl: could not connect (EACCES)
    # The same user in the socket's group (root's, here) gets in.
    gid = os.stat(served.path).st_gid
    member = ["setpriv", "--reuid=65534", "--regid=65534", f"--groups={gid}"]
    allowed = await trio.run_process(
        [*member, "curl", "-sS", "--unix-socket", served.path, "http://localhost/v1/status"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["ok"] is True


async def test_socket_file_is_removed_on_exit_and_lock_released(sockdir):
    path = os.path.join(sockdir, "control.sock")
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        assert os.path.exists(path)
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)
    async with trio.open_nursery() as nursery:  # the same path can be served again at once
        await start_server(nursery, path)
        code, _, _ = await curl(path, "http://localhost/v1/status")
        assert code == 200
        nursery.cancel_scope.cancel()


async def test_exit_during_a_long_poll_cleans_up(sockdir):
    path = os.path.join(sockdir, "control.sock")
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        stream = await trio.open_unix_socket(path)
        await RawHTTP(stream).send("GET", "/wait")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert await stream.receive_some(10) == b""
    assert not os.path.exists(path)


async def test_stale_socket_file_is_replaced(sockdir, caplog):
    path = os.path.join(sockdir, "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # what a crashed service leaves: the file, nobody listening
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with caplog.at_level(logging.INFO, logger="shardsync.daemon.control"):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path)
            code, _, _ = await curl(path, "http://localhost/v1/status")
            assert code == 200
            nursery.cancel_scope.cancel()
    assert "stale" in caplog.text


async def test_live_socket_is_not_taken_over(sockdir):
    path = os.path.join(sockdir, "control.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(LockedError, match="already running"):
            await serve_control(path, App().router, environ={})
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)  # still the original listener's
        probe.close()
    finally:
        live.close()


async def test_second_server_on_the_same_path_is_refused(served):
    with pytest.raises(LockedError, match="already running"):
        await serve_control(served.path, App().router, environ={})
    code, _, _ = await curl(served.path, "http://localhost/v1/status")
    assert code == 200


async def test_non_socket_file_is_never_removed(sockdir):
    path = os.path.join(sockdir, "control.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(ShardsyncError, match="not a socket"):
        await serve_control(path, App().router, environ={})
    with open(path) as f:
        assert f.read() == "precious"


async def test_unusable_paths_are_clear_errors(sockdir):
    with pytest.raises(ShardsyncError, match="does not exist"):
        await serve_control(os.path.join(sockdir, "no", "such", "c.sock"), App().router,
                            environ={})
    with pytest.raises(ShardsyncError, match="too long"):
        await serve_control(os.path.join(sockdir, "x" * 120), App().router, environ={})


async def test_a_given_socket_object_is_served_and_not_unlinked(nursery, sockdir):
    path = os.path.join(sockdir, "given.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    app = App()
    address = await nursery.start(serve_control, sock, app.router)
    assert address == path
    code, _, _ = await curl(path, "http://localhost/v1/status")
    assert code == 200


# ---------------------------------------------------------------- systemd socket activation

_CHILD = textwrap.dedent("""
    import os, sys, trio
    from shardsync.daemon.control import Response, serve_control

    async def handler(request):
        return Response(200, {"pid": os.getpid(), "env_left": "LISTEN_FDS" in os.environ})

    async def main():
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_control, sys.argv[1], handler)
            print(address, flush=True)

    trio.run(main)
""")


def test_socket_activation_uses_fd_3_instead_of_binding(sockdir):
    real = os.path.join(sockdir, "systemd.sock")
    configured = os.path.join(sockdir, "configured.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(real)
    sock.listen(8)
    fd = sock.fileno()
    # As systemd does: the socket at fd 3, LISTEN_PID set to the service's own pid (exec keeps it).
    wrapper = textwrap.dedent(f"""
        import os, sys
        os.dup2({fd}, 3, inheritable=True)
        os.close({fd})
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], sys.argv[2]])
    """)
    proc = subprocess.Popen([sys.executable, "-c", wrapper, _CHILD, configured],
                            pass_fds=(fd,), stdout=subprocess.PIPE, text=True)
    sock.close()
    try:
        assert proc.stdout.readline().strip() == real  # started on the passed socket
        answer = get_json(real, "/v1/status")
        assert answer == {"pid": proc.pid, "env_left": False}
        assert not os.path.exists(configured)
        assert not os.path.exists(configured + ".lock")
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()
    assert os.path.exists(real)  # systemd's socket file is systemd's to remove


def test_activation_refuses_a_connected_socket(sockdir):
    # Accept=yes units pass a connection, not a listener: fd 3 is such a socket here.
    path = os.path.join(sockdir, "l.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    code = ("import os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "from shardsync.daemon.control import activation_socket\n"
            "from shardsync.store.errors import ShardsyncError\n"
            "try:\n    activation_socket()\nexcept ShardsyncError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(conn.fileno())],
                          pass_fds=(conn.fileno(),), capture_output=True, text=True, check=True)
    assert "Accept=no" in proc.stdout
    conn.close()
    listener.close()


def test_activation_socket_needs_our_pid():
    other = str(os.getpid() + 1)
    assert activation_socket({"LISTEN_PID": other, "LISTEN_FDS": "1"}) is None
    assert activation_socket({"LISTEN_FDS": "1"}) is None
    assert activation_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) is None
    assert activation_socket({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) is None


# ---------------------------------------------------------------- router, request, response


async def test_router_404_405_and_params():
    router = App().router
    with pytest.raises(HTTPError) as err:
        await router(Request("GET", "/v1/models"))
    assert err.value.status == 404
    with pytest.raises(HTTPError) as err:
        await router(Request("PUT", "/v1/models/a/sync"))
    assert err.value.status == 405 and err.value.headers == [("allow", "POST")]
    with pytest.raises(HTTPError) as err:
        await router(Request("GET", "/v1/models//sync"))  # an empty placeholder matches nothing
    assert err.value.status == 404
    response = await router(Request("HEAD", "/v1/models/x%20y"))
    assert response.json_body() == {"name": "x y"}


def test_router_refuses_bad_patterns():
    router = Router()

    async def h(request):
        return Response()

    router.add("GET", "/v1/models/{name}", h)
    for method, pattern in [("GET", "/v1/models/{name}"), ("get", "/v1/models/{other}"),
                            ("GET", "v1/x"), ("GET", "/a/{b}/{b}"), ("GET", "/a/{b-c}"),
                            ("GET", "/a?b=1")]:
        with pytest.raises(ValueError):
            router.add(method, pattern, h)


def test_request_helpers():
    req = Request("GET", "/v1/events", query={"since": "12", "timeout": "2.5", "bad": "x"})
    assert req.query_int("since", 0, minimum=0) == 12
    assert req.query_int("missing", 7) == 7
    assert req.query_float("timeout", 30.0, maximum=60) == 2.5
    for call in (lambda: req.query_int("bad", 0), lambda: req.query_int("since", 0, maximum=5),
                 lambda: Request("GET", "/", query={"t": "nan"}).query_float("t", 1.0),
                 lambda: Request("POST", "/", body=b"{oops").json()):
        with pytest.raises(HTTPError) as err:
            call()
        assert err.value.status == 400
    assert Request("POST", "/", body=b"  ").json(default={}) == {}


def test_response_encodings():
    assert Response(200, {"a": 1}).body == b'{"a":1}\n'
    assert Response(200, {"a": 1}).content_type == "application/json"
    assert Response(200, "hi").content_type == "text/plain; charset=utf-8"
    assert Response(200, b"\x00").content_type == "application/octet-stream"
    assert Response.json("text").body == b'"text"\n'
    assert Response(204).body == b""
    with pytest.raises(ValueError):
        Response(204, {"no": "body"})
    with pytest.raises(ValueError):
        Response(100)
    with pytest.raises(TypeError):
        Response(200, {"x": object()})


# ---------------------------------------------------------------- the client


async def test_client_get_and_post(served):
    status = await trio.to_thread.run_sync(get_json, served.path, "/v1/status")
    assert status == {"ok": True, "query": {}}
    answer = await trio.to_thread.run_sync(post_json, served.path, "/v1/models/m/sync", {"a": 1})
    assert answer == {"name": "m", "body": {"a": 1}}

    def several():
        with ControlClient(served.path) as client:
            return client.get("/v1/status", since=3), client.post("/v1/models/n/sync")

    first, second = await trio.to_thread.run_sync(several)
    assert first["query"] == {"since": "3"} and second == {"name": "n", "body": None}


async def test_client_error_answers(served):
    with pytest.raises(NotFoundError, match="no such resource"):
        await trio.to_thread.run_sync(get_json, served.path, "/v1/nothing")
    with pytest.raises(ShardsyncError, match=r"internal error: RuntimeError: kaput \(HTTP 500\)"):
        await trio.to_thread.run_sync(get_json, served.path, "/boom")
    with pytest.raises(ShardsyncError, match="did not answer within 0.2 s"):
        await trio.to_thread.run_sync(lambda: get_json(served.path, "/wait", timeout=0.2))
    with pytest.raises(ShardsyncError, match="not JSON"):
        await trio.to_thread.run_sync(get_json, served.path, "/metrics")


def test_client_when_nothing_runs(sockdir):
    path = os.path.join(sockdir, "control.sock")
    with pytest.raises(ShardsyncError) as err:
        get_json(path, "/v1/status")
    assert str(err.value) == f"shardsync is not running (no socket at {path})"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(ShardsyncError) as err:
        get_json(path, "/v1/status")
    assert str(err.value) == f"shardsync is not running (nothing listens on {path})"


async def test_client_permission_denied(served):
    assert os.geteuid() == 0, "this test drops CAP_DAC_OVERRIDE with setpriv; run it as root"
    os.chmod(served.path, 0)  # with no capability to override it, even the owner is refused
    code = ("from shardsync.daemon.client import get_json\n"
            "from shardsync.store.errors import ShardsyncError\n"
            "try:\n    get_json(__import__('sys').argv[1], '/v1/status')\n"
            "except ShardsyncError as e:\n    print(e)\n")
    proc = await trio.run_process(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-c", code, served.path],
        capture_stdout=True)
    assert proc.stdout.decode().startswith(f"permission denied on {served.path}")
