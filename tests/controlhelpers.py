"""Shared by the control socket's tests: a router like the service's, a server on a
short socket path, curl, and a raw h11 client to see what happens on one connection."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from types import SimpleNamespace

import h11
import trio

from shardsync.daemon.control import serve_control
from shardsync.daemon.httpserver import HTTPError, Request, Response, Router
from shardsync.daemon.metrics import CONTENT_TYPE


def short_sockdir() -> Iterator[str]:
    """A fixture body: a Unix socket path must fit in 107 bytes, pytest's tmp_path may not."""
    d = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class App:
    """A router like the service's, with a gate a long-poll handler waits on."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.router = r = Router()
        r.add("GET", "/v1/status", self.status)
        r.add("GET", "/v1/models/{name}", self.model)
        r.add("POST", "/v1/models/{name}/sync", self.sync)
        r.add("GET", "/boom", self.boom)
        r.add("GET", "/teapot", self.teapot)
        r.add("GET", "/wait", self.wait)
        r.add("GET", "/metrics", self.metrics)
        r.add("POST", "/echo", self.echo, body=True)

    async def status(self, request: Request) -> Response:
        return Response(200, {"ok": True, "query": dict(request.query)})

    async def model(self, request: Request) -> Response:
        return Response(200, {"name": request.params["name"]})

    async def sync(self, request: Request) -> Response:
        return Response(202, {"name": request.params["name"]})

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("kaput")

    async def teapot(self, request: Request) -> Response:
        raise HTTPError(418, "short and stout")

    async def wait(self, request: Request) -> Response:
        await self.gate.wait()
        return Response(200, {"woke": True})

    async def echo(self, request: Request) -> Response:
        return Response(200, {"body": request.json()})

    async def metrics(self, request: Request) -> Response:
        return Response(200, "up 1\n", CONTENT_TYPE)


async def start_server(nursery, path, **kwargs):
    app = App()
    address = await nursery.start(lambda task_status: serve_control(
        path, app.router, environ={}, task_status=task_status, **kwargs))
    return SimpleNamespace(path=path, app=app, address=address)


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
