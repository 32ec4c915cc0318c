"""`sudo shardsync sync` on a state_dir someone else owns is refused, naming the user to
run it as (issue 13: root-owned files the service could never remove); that user's own
run works. Real users, real processes: a system user made for the test owns state_dir,
root runs `shardsync` as the test runs it, the user through setpriv."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from origin import Origin
from storehelpers import tfjs_model
from synchelpers import assert_published, cli_command, publish_on, write_config
from userhelpers import public_dir, shardsync_as, system_user

from shardsync.daemon.errors import WrongUserError
from shardsync.daemon.owner import ANY_USER_ENV, check_owner

MODEL = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x05" * 4096}])


def test_root_is_refused_on_a_users_state_dir_and_the_user_succeeds(
    origin: Origin,
) -> None:
    with public_dir() as base, system_user("sssvc") as svc:
        state = base / "state"
        state.mkdir()
        os.chown(state, svc.uid, svc.gid)
        config = write_config(base / "conf", {"m": publish_on(origin, "m", MODEL)},
                              state_dir=str(state), site_dir=str(state / "site"))
        for command in ("sync", "verify", "gc"):
            run = subprocess.run(cli_command(command, "-c", config), capture_output=True,
                                 text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert run.returncode == 2, run.stderr
            want = f"run it as {svc.name}, e.g. sudo -u {svc.name} shardsync {command} -c {config}"
            assert want in run.stderr, run.stderr
            assert f"state_dir {state} belongs to {svc.name}" in run.stderr
            assert ANY_USER_ENV in run.stderr
            assert list(state.iterdir()) == []  # refused before writing anything

        run = shardsync_as(svc, "sync", "-c", config)
        assert run.returncode == 0, run.stderr
        assert_published(state / "site", "m", MODEL)
        owners = {p.stat().st_uid for p in [state, *state.rglob("*")]}
        assert owners == {svc.uid}
        run = shardsync_as(svc, "verify", "-c", config)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_escape_hatch_and_a_state_dir_not_made_yet(tmp_path: Path) -> None:
    with public_dir() as base, system_user("sssvc") as svc:
        os.chown(base, svc.uid, svc.gid)
        with pytest.raises(WrongUserError) as err:
            check_owner(base, argv=["sync", "-c", "/etc/shardsync/config.toml"], environ={})
        assert err.value.owner == svc.name
        assert (f"e.g. {shlex.join(['sudo', '-u', svc.name, 'shardsync', 'sync', '-c'])} "
                "/etc/shardsync/config.toml") in str(err.value)
        check_owner(base, argv=[], environ={ANY_USER_ENV: "1"})
    check_owner(tmp_path / "not-yet", argv=[], environ={})  # this user will make it
    check_owner(tmp_path, argv=[], environ={})  # root's own
