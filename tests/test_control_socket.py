"""Acquiring the control socket (shardsync.daemon.control_socket) as serve_control uses it:
the socket file's mode, stale and live sockets, systemd socket activation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing
from controlhelpers import App, RawHTTP, curl, read_until_eof, start_server

from shardsync.daemon.client import get_json
from shardsync.daemon.control import serve_control
from shardsync.daemon.control_socket import SOCKET_MODE, activation_socket
from shardsync.daemon.httpserver import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_REFUSING,
    RETRY_AFTER,
)
from shardsync.store import LockedError, ShardsyncError

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


# ---------------------------------------------------------------- how many connections


async def _status_over(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    client = RawHTTP(stream)
    await client.send("GET", "/v1/status")
    return await client.response()


async def test_past_max_connections_a_request_gets_503_then_room_comes_back(served):
    held = [await trio.open_unix_socket(served.path) for _ in range(MAX_CONNECTIONS)]
    over = [await trio.open_unix_socket(served.path) for _ in range(4)]  # idle, past the cap
    await trio.testing.wait_all_tasks_blocked()  # the server has taken every one of them

    late = await trio.open_unix_socket(served.path)
    status, headers, body = await _status_over(late)
    assert status == 503
    assert headers["retry-after"] == str(RETRY_AFTER) and headers["connection"] == "close"
    assert f"maximum of {MAX_CONNECTIONS} connections" in json.loads(body)["error"]
    assert await read_until_eof(late) == b""  # and closed

    # Idle connections past the cap are let go after REFUSE_TIMEOUT, well before the
    # idle timeout of the served ones: a flood does not keep its descriptors.
    with trio.fail_after(IDLE_TIMEOUT / 2):
        for stream in over:
            assert await read_until_eof(stream) == b""
    # A connection already served is unaffected by the cap.
    status, _, _ = await _status_over(held[0])
    assert status == 200

    for stream in held[-8:]:
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()  # the server has seen them close
    code, body, _ = await curl(served.path, "http://localhost/v1/status")
    assert code == 200 and json.loads(body)["ok"] is True
    for stream in held[:-8]:
        await stream.aclose()


async def test_the_client_waits_out_a_full_socket_instead_of_failing(served):
    # `shardsync status` during a flood: the first answers are 503 (the request was not
    # served), so the client sends it again after Retry-After until a slot frees.
    held = [await trio.open_unix_socket(served.path) for _ in range(MAX_CONNECTIONS)]
    await trio.testing.wait_all_tasks_blocked()

    async def free_some_later() -> None:
        await trio.sleep(1.5)  # after the client's first 503 (Retry-After: 1)
        for stream in held[-8:]:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(free_some_later)
        status = await trio.to_thread.run_sync(get_json, served.path, "/v1/status")
    assert status["ok"] is True
    for stream in held[:-8]:
        await stream.aclose()


async def test_past_the_refusals_in_hand_a_connection_is_closed_unanswered(served):
    streams = [await trio.open_unix_socket(served.path)
               for _ in range(MAX_CONNECTIONS + MAX_REFUSING)]
    await trio.testing.wait_all_tasks_blocked()
    extra = await trio.open_unix_socket(served.path)
    with contextlib.suppress(trio.BrokenResourceError):
        await RawHTTP(extra).send("GET", "/v1/status")
    assert await read_until_eof(extra) == b""  # no 503: nothing at all
    for stream in streams:
        await stream.aclose()


async def test_stale_socket_file_is_replaced(sockdir, caplog):
    path = os.path.join(sockdir, "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # what a crashed service leaves: the file, nobody listening
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with caplog.at_level(logging.INFO, logger="shardsync.daemon.control_socket"):
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
    from shardsync.daemon.control import serve_control
    from shardsync.daemon.httpserver import Response

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
            "from shardsync.daemon.control_socket import activation_socket\n"
            "from shardsync.store import ShardsyncError\n"
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
