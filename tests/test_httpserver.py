"""The HTTP/1.1 server (shardsync.daemon.httpserver) on a real Unix socket, with curl,
httpx and raw bytes; its router, requests and responses in-process."""

from __future__ import annotations

import json
import logging
import os

import httpx
import pytest
import trio
from controlhelpers import App, RawHTTP, curl, read_until_eof

from shardsync.daemon.control import serve_control
from shardsync.daemon.events import EventLog
from shardsync.daemon.httpserver import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    HTTPError,
    Request,
    Response,
    Router,
)
from shardsync.daemon.metrics import CONTENT_TYPE

# ---------------------------------------------------------------- requests through curl and httpx


async def test_curl_gets_status(served):
    code, body, _ = await curl(served.path, "http://localhost/v1/status?since=4&x=%C3%A9")
    assert code == 200
    assert json.loads(body) == {"ok": True, "query": {"since": "4", "x": "é"}}
    assert served.address == served.path


async def test_curl_posts_to_a_path_with_a_parameter(served):
    code, body, _ = await curl(served.path, "http://localhost/v1/models/face%2Dapi/sync",
                               "-X", "POST")
    assert code == 202
    assert json.loads(body) == {"name": "face-api"}


async def test_a_request_body_is_refused_unread_with_413(served):
    # Over MAX_BODY_BYTES (curl sends "Expect: 100-continue" above 1 KiB and waits):
    # 413, no 100 Continue, closed, whatever the route.
    for route in ("/v1/models/m/sync", "/echo"):
        code, body, proc = await curl(served.path, f"http://localhost{route}",
                                      "-d", json.dumps({"pad": "x" * 5000}), "-i")
        assert code == 413 and "100 Continue" not in body
        assert "\r\nconnection: close\r\n" in body
        assert json.loads(body.partition("\r\n\r\n")[2]) == {
            "error": f"a request body may be at most {MAX_BODY_BYTES} bytes, "
                     "with a Content-Length"}
    # A small body to a route that takes none: 413 too.
    code, body, _ = await curl(served.path, "http://localhost/v1/models/m/sync",
                               "-d", '{"force": true}')
    assert code == 413
    assert json.loads(body) == {"error": "POST /v1/models/m/sync takes no request body"}
    # Declared, never sent: answered at once, the body is not waited for.
    stream = await trio.open_unix_socket(served.path)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: l\r\n"
                          b"content-length: 5000000\r\nexpect: 100-continue\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data
    # Chunked: refused on the head alone too.
    stream = await trio.open_unix_socket(served.path)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: l\r\n"
                          b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert (await read_until_eof(stream)).startswith(b"HTTP/1.1 413 ")


async def test_a_route_that_takes_a_body_gets_it_up_to_the_limit(served):
    # Small, and just under the limit (curl waits for our 100 Continue above 1 KiB).
    for doc in ({"version": "0123456789abcdef"},
                {"pad": "x" * (MAX_BODY_BYTES - len('{"pad": ""}'))}):
        with trio.fail_after(0.9):  # curl would wait 1 s for a 100 Continue we never sent
            code, body, _ = await curl(served.path, "http://localhost/echo",
                                       "-d", json.dumps(doc))
        assert code == 200 and json.loads(body) == {"body": doc}
    code, body, _ = await curl(served.path, "http://localhost/echo", "-d", "{nope")
    assert code == 400 and "not JSON" in json.loads(body)["error"]
    code, body, _ = await curl(served.path, "http://localhost/echo", "-d", '{"x": NaN}')
    assert code == 400


async def test_an_empty_body_is_no_body(served):
    # httpx sends "content-length: 0" on a POST without a body; the connection stays usable.
    stream = await trio.open_unix_socket(served.path)
    raw = RawHTTP(stream)
    await raw.send("POST", "/v1/models/m/sync", headers=[("content-length", "0")])
    status, headers, body = await raw.response()
    assert status == 202 and json.loads(body) == {"name": "m"} and "connection" not in headers
    await raw.send("GET", "/v1/models/n")
    assert (await raw.response())[0] == 200
    await stream.aclose()


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
    with caplog.at_level(logging.ERROR, logger="shardsync.daemon.httpserver"):
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

    async def events(request: Request) -> Response:
        since = request.query_int("since", 0, minimum=0)
        timeout = request.query_float("timeout", 25.0, minimum=0, maximum=600)
        if since >= log.last_id:
            parked.set()
        return Response(200, (await log.wait_since(since, timeout)).to_json())

    router.add("GET", "/v1/events", events)
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


async def test_oversized_headers_are_refused(served):
    stream = await trio.open_unix_socket(served.path)
    # Never finished, and already past the 16 KiB a request head may take.
    await stream.send_all(b"GET /v1/status HTTP/1.1\r\nhost: l\r\nx-big: " + b"a" * 20000)
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 431 ")


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
                 lambda: Request("GET", "/", query={"t": "nan"}).query_float("t", 1.0)):
        with pytest.raises(HTTPError) as err:
            call()
        assert err.value.status == 400


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
