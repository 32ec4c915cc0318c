"""Run a real nginx on 127.0.0.1 with a throwaway config, for tests.

The config under test is a ``server { }`` block (what ``shardsync nginx-config``
prints); this module wraps it in the smallest ``nginx.conf`` that keeps every
path (pid, logs, temp files) inside a test's tmp directory, starts
``nginx -p DIR -c nginx.conf -g 'daemon off;'`` as a child process on a free
port, and stops it on exit. Nothing here changes the server block itself, so
what the tests check is exactly what an operator installs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NginxServer", "find_nginx", "free_port", "run_nginx"]

#: How long nginx may take to listen; seconds, generous for a loaded 2-core machine.
START_TIMEOUT = 30.0

#: Attempts at a fresh port when another test grabbed ours between probe and bind.
PORT_ATTEMPTS = 5

#: Pause between "is it listening yet" probes: nginx binds within milliseconds.
PROBE_INTERVAL = 0.02

_NGINX_CONF = """\
# Throwaway nginx.conf written by tests/e2e/webserver.py.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    sendfile on;
    include {dir}/server.conf;
}}
"""


def find_nginx() -> str:
    """Return the nginx binary; AssertionError saying how to install it if there is none."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                      else None)
    assert found, "nginx is not installed: run `bash tests/setup-deps.sh` (as root) first"
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NginxServer:
    """A running nginx: ``url`` is ``http://127.0.0.1:PORT`` (no trailing slash)."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        """nginx's error log so far (for failure messages)."""
        try:
            return (self.dir / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """True once something accepts on ``port``; False if nginx exited first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(PROBE_INTERVAL)
    raise AssertionError(f"nginx did not listen on 127.0.0.1:{port} within {START_TIMEOUT} s")


@contextmanager
def run_nginx(workdir: Path, server_conf: Callable[[str], str]) -> Iterator[NginxServer]:
    """Run nginx with the server block(s) ``server_conf(listen)`` returns; stop it on exit.

    ``listen`` is ``"127.0.0.1:PORT"`` for a free port; if nginx fails to bind it
    (another test took it), a new port is tried. ``workdir`` (created) holds
    nginx.conf, server.conf, the pid file, logs and temp paths. A config nginx
    rejects raises AssertionError with nginx's own message.
    """
    nginx = find_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "temp").mkdir(exist_ok=True)
    # As root, nginx would drop its workers to "nobody", who cannot read a
    # pytest tmp dir (mode 0700); a non-root nginx ignores "user".
    user = "user root;\n" if os.geteuid() == 0 else ""
    (workdir / "nginx.conf").write_text(_NGINX_CONF.format(dir=workdir, user=user))
    failure = ""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        (workdir / "server.conf").write_text(server_conf(f"127.0.0.1:{port}"))
        with open(workdir / "stderr.log", "wb") as err:
            proc = subprocess.Popen(
                [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"),
                 "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        try:
            if _wait_listening(port, proc):
                server = NginxServer(port=port, dir=workdir, proc=proc)
                try:
                    yield server
                finally:
                    proc.terminate()
                    proc.wait(timeout=START_TIMEOUT)
                return
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        failure = (workdir / "stderr.log").read_text(errors="replace")
        if "Address already in use" not in failure:
            break
    raise AssertionError(f"nginx failed to start:\n{failure}")
