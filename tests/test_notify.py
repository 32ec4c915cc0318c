"""sd_notify against real AF_UNIX datagram sockets (a path one and an abstract one)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest
import trio

from shardsync.daemon.notify import Notifier


@pytest.fixture
def path_receiver(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)  # a missing datagram fails the test instead of hanging it
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_receiver():
    name = f"shardsync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


@pytest.mark.parametrize("receiver", ["path_receiver", "abstract_receiver"])
def test_socket_receives_exact_messages(receiver, request):
    address, sock = request.getfixturevalue(receiver)
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    if address.startswith("@"):  # an abstract socket: a leading NUL, not a path
        assert n.address == b"\0" + address[1:].encode()
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert n.status("syncing 2 models\nsecond line")
    assert sock.recv(4096) == b"STATUS=syncing 2 models second line"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_reloading_carries_monotonic_usec(path_receiver):
    path, sock = path_receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert len(lines) == 2
    n.close()


def test_no_socket_is_a_noop():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval() is None


def test_unsupported_address_is_a_noop(caplog):
    with caplog.at_level(logging.WARNING):
        n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert "vsock:2:1234" in caplog.text


def test_send_failure_is_logged_not_raised(tmp_path, caplog):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.DEBUG, logger="shardsync.daemon.notify"):
        assert n.ready() is False
        assert n.watchdog() is False
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG]  # warned once, then quiet
    n.close()


def test_full_queue_does_not_block_and_recovers(path_receiver, caplog):
    path, sock = path_receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    # The receiver never reads: a blocking socket would hang here once its queue is full.
    results = [n.watchdog() for _ in range(5000)]
    assert False in results
    sock.setblocking(False)
    while True:  # drain
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    with caplog.at_level(logging.INFO, logger="shardsync.daemon.notify"):
        assert n.ready()
    assert "works again" in caplog.text
    n.close()


def test_watchdog_interval_is_half_the_period_for_our_pid():
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval() == 15.0
    assert Notifier.from_env({"WATCHDOG_USEC": "4000000"}).watchdog_interval() == 2.0


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
        {},
    ],
)
def test_watchdog_interval_absent(env):
    assert Notifier.from_env(env).watchdog_interval() is None


async def test_run_watchdog_pings_every_half_period(path_receiver, autojump_clock):
    path, sock = path_receiver
    sock.setblocking(False)
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    with trio.move_on_after(22):  # pings at 0, 5, 10, 15 and 20 s
        await n.run_watchdog()
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 5
    n.close()


async def test_run_watchdog_returns_without_a_watchdog(path_receiver, autojump_clock):
    path, _ = path_receiver
    start = trio.current_time()
    await Notifier.from_env({"NOTIFY_SOCKET": path}).run_watchdog()
    await Notifier.from_env({"WATCHDOG_USEC": "10000000"}).run_watchdog()
    assert trio.current_time() == start
