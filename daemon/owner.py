"""Who may run a one-shot command on a store: the user who owns state_dir.

`sudo shardsync sync` on the service's state_dir leaves root-owned directories in
site_dir and the store; minutes later the service (user ``shardsync``) cannot remove
them when it prunes, and old versions pile up (issue 13). Dropping privileges to the
owner would need root and would be surprising; refusing, with the exact command to run
instead, is plain. ``SHARDSYNC_ANY_USER=1`` lets an operator who knows what they do
(e.g. root fixing things by hand, then ``chown -R``) through.
"""

from __future__ import annotations

import os
import pwd
import shlex
import sys
from collections.abc import Mapping, Sequence

from .errors import WrongUserError

__all__ = ["ANY_USER_ENV", "check_owner"]

#: Set to 1 to let a user other than state_dir's owner run a command on it.
ANY_USER_ENV = "SHARDSYNC_ANY_USER"


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # no passwd entry (a uid from another machine): its number works


def check_owner(state_dir: str | os.PathLike[str], *, argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> None:
    """Raise WrongUserError unless this process's effective uid owns ``state_dir``.

    Root is refused too: that is the case that hurts. A state_dir that does not exist
    yet is fine (this user makes it, and owns it), and so is anything with
    ``SHARDSYNC_ANY_USER=1``. The message names the owner and the command to run as it,
    rebuilt from ``argv`` (default: this process's arguments).
    """
    environ = os.environ if environ is None else environ
    if environ.get(ANY_USER_ENV) == "1":
        return
    try:
        owner_uid = os.stat(state_dir).st_uid
    except FileNotFoundError:
        return
    me = os.geteuid()
    if owner_uid == me:
        return
    owner = _name(owner_uid)
    args = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["sudo", "-u", owner, "shardsync", *args])
    raise WrongUserError(
        f"state_dir {os.fspath(state_dir)} belongs to {owner}, and what {_name(me)} made "
        f"there {owner} could not change or remove later: run it as {owner}, e.g. "
        f"{command} (or set {ANY_USER_ENV}=1 to run it anyway)", owner=owner)
