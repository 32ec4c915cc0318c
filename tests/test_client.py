"""The control socket's client (shardsync.daemon.client) against a real server."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import trio

from shardsync.daemon.client import ControlClient, get_json, post_json
from shardsync.store import NotFoundError, ShardsyncError

# ---------------------------------------------------------------- the client


async def test_client_get_and_post(served):
    status = await trio.to_thread.run_sync(get_json, served.path, "/v1/status")
    assert status == {"ok": True, "query": {}}
    answer = await trio.to_thread.run_sync(post_json, served.path, "/v1/models/m/sync")
    assert answer == {"name": "m"}

    def several():
        with ControlClient(served.path) as client:
            return client.get("/v1/status", since=3), client.post("/v1/models/n/sync")

    first, second = await trio.to_thread.run_sync(several)
    assert first["query"] == {"since": "3"} and second == {"name": "n"}


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
            "from shardsync.store import ShardsyncError\n"
            "try:\n    get_json(__import__('sys').argv[1], '/v1/status')\n"
            "except ShardsyncError as e:\n    print(e)\n")
    proc = await trio.run_process(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-c", code, served.path],
        capture_stdout=True)
    assert proc.stdout.decode().startswith(f"permission denied on {served.path}")
