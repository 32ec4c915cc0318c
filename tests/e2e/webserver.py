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

__all__ = ["NginxServer", "find_nginx", "free_ports", "nginx_argv", "run_nginx"]

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


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (kept bound together while choosing, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NginxServer:
    """A running nginx: ``url`` is ``http://127.0.0.1:PORT`` (no trailing slash)."""

    ports: list[int]
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        """The first port (the only one unless ``run_nginx(ports=N)``)."""
        return self.ports[0]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the first port."""
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        """``http://127.0.0.1:PORT`` for each port, in the order server_conf got them."""
        return [f"http://127.0.0.1:{p}" for p in self.ports]


def _wait_listening(ports: list[int], proc: subprocess.Popen[bytes]) -> bool:
    """True once something accepts on every port; False if nginx exited first."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(ports)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", waiting[0])) == 0:
                waiting.pop(0)
                if not waiting:
                    return True
                continue
        time.sleep(PROBE_INTERVAL)
    raise AssertionError(f"nginx did not listen on 127.0.0.1:{ports} within {START_TIMEOUT} s")


def nginx_argv(workdir: Path, *, user: str | None = None) -> list[str]:
    """Write ``workdir/nginx.conf`` (which includes ``workdir/server.conf``, the
    caller's to write) and return the argv that runs nginx on it in the foreground.

    ``workdir`` (created) holds the pid file, logs and temp paths. As root, the
    workers run as ``user`` (default root: nginx would otherwise drop them to
    "nobody", who cannot read a pytest tmp dir of mode 0700); a non-root nginx
    ignores "user".
    """
    nginx = find_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "temp").mkdir(exist_ok=True)
    as_user = f"user {user or 'root'};\n" if os.geteuid() == 0 else ""
    (workdir / "nginx.conf").write_text(_NGINX_CONF.format(dir=workdir, user=as_user))
    return [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"),
            "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]


@contextmanager
def run_nginx(
    workdir: Path, server_conf: Callable[..., str], *, ports: int = 1, user: str | None = None
) -> Iterator[NginxServer]:
    """Run nginx with the server block(s) ``server_conf(*listens)`` returns; stop it on exit.

    ``listens`` are ``ports`` strings ``"127.0.0.1:PORT"``, each a free port;
    if nginx fails to bind one (another test took it), new ports are tried.
    ``workdir`` (created) holds nginx.conf, server.conf, the pid file, logs and
    temp paths. A config nginx rejects raises AssertionError with nginx's own
    message. ``user`` (as root only) runs the workers as that user, as a web server
    runs them: only then do file modes decide what it can serve.
    """
    argv = nginx_argv(workdir, user=user)
    failure = ""
    for _ in range(PORT_ATTEMPTS):
        chosen = free_ports(ports)
        (workdir / "server.conf").write_text(server_conf(*(f"127.0.0.1:{p}" for p in chosen)))
        with open(workdir / "stderr.log", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        try:
            if _wait_listening(chosen, proc):
                server = NginxServer(ports=chosen, dir=workdir, proc=proc)
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
