"""Real users for the permission tests: a system user made with ``useradd --system`` and
removed after, directories that user can reach, and commands run as it.

The tests run as root, whose permission checks pass whatever the modes say, so a test
of "can the web server read it" or "who owns what a sync leaves" needs a second, real
user. pytest's tmp directories are 0700 below ``/tmp/pytest-of-root``, out of that
user's reach, so :func:`public_dir` makes its own directory (0755) in ``/tmp``.

A command run as the user cannot exec this venv's interpreter: it lives under
``/root`` (0700), as the README warns. :func:`shardsync_as` runs the system's
``python3.11`` (same minor version) with this venv's site-packages added, which is
the installed shardsync and its dependencies, unchanged.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SystemUser", "public_dir", "shardsync_as", "system_user"]

#: The system interpreter a system user can run (/usr/bin is 0755; /root is 0700).
SYSTEM_PYTHON = "/usr/bin/python3.11"


@dataclass(frozen=True)
class SystemUser:
    """A real user of this machine (``useradd --system``), with its own group."""

    name: str
    uid: int
    gid: int

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run as this user, its groups its own (setpriv, no shell, no PAM)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                *argv]


@contextmanager
def system_user(prefix: str = "sstest") -> Iterator[SystemUser]:
    """A fresh system user (no home, no login shell), removed with its group on exit."""
    assert os.geteuid() == 0, "the permission tests create users: run them as root"
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield SystemUser(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def public_dir() -> Iterator[Path]:
    """A new directory in /tmp, mode 0755 (other users may traverse it), removed on exit."""
    path = Path(tempfile.mkdtemp(prefix="shardsync-perm-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def shardsync_as(user: SystemUser, *args: str | os.PathLike[str],
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``shardsync ARGS`` as ``user`` to the end (see the module docstring)."""
    assert os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} is needed to run as {user.name}"
    boot = ("import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = 'shardsync'; "
            "from shardsync.daemon.cli import main; sys.exit(main())")
    argv = [SYSTEM_PYTHON, "-c", boot, sysconfig.get_path("purelib"), *map(str, args)]
    return subprocess.run(user.command(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd="/")
