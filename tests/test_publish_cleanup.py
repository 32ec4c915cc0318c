"""A published version counts as published whatever the clean-up after it hits, and
every such failure names its path (issue 13: `cannot remove old version: Permission
denied`, no path, and a published version counted as a failed sync).

The failures are real: ``chattr +i`` on a directory inside an old version (root cannot
unlink what is in it, as the service user cannot unlink what a `sudo shardsync sync`
left), or on the old version's directory itself (it cannot even be renamed away).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from origin import Origin
from servicehelpers import NotifySocket, ServiceProcess, short_dir
from storehelpers import publish_model, store_at, versioned_model
from synchelpers import assert_published, open_syncer, publish_on, sync, write_config

from shardsync.daemon.service import GRACE_ENV
from shardsync.store import StorageError


@contextmanager
def immutable(path: Path, below: Path) -> Iterator[Path]:
    """``path`` with the immutable attribute set (the test's file system must support it:
    ext4 and xfs do; a skip would prove nothing).

    On exit it is cleared on every directory below ``below``: a prune may have renamed
    the directory holding ``path`` away (``.tmp-rm-*``), and an immutable directory left
    behind would make the tmp directory impossible to remove."""
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"chattr +i is not supported here: {r.stderr.strip()}"
    try:
        yield path
    finally:
        for d in [below, *(p for p in below.rglob("*") if p.is_dir() and not p.is_symlink())]:
            subprocess.run(["chattr", "-i", str(d)], check=True)


def only_version(site: Path, name: str) -> Path:
    (v,) = [p for p in (site / name / "versions").iterdir() if not p.name.startswith(".")]
    return v


def test_a_failed_prune_after_publish_is_logged_with_its_path_and_not_raised(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    state, site = dirs
    with store_at(state, site, keep_versions=1, grace=0) as store:
        v1 = publish_model(store, "m", versioned_model(1, subdir="w"))
        old = only_version(site, "m")
        with immutable(old / "w", site), caplog.at_level(logging.WARNING):
            v2 = publish_model(store, "m", versioned_model(2, subdir="w"))
            assert store.current("m") == v2
            assert assert_published(site, "m", versioned_model(2, subdir="w")) == v2.id
            warned = "\n".join(r.getMessage() for r in caplog.records)
            assert f"published version {v2.id}, but" in warned
            # The message names the directory and the file that could not go.
            assert f"{site}/m/versions/{v1.id}: cannot remove old version" in warned
            assert f"{site}/m/versions/.tmp-rm-" in warned
            failed = r"Operation not permitted: \S+/\.tmp-rm-[^/]+/w/group1-shard\dof3\.bin"
            assert re.search(failed, warned), warned
        assert store.prune("m") == [v1.id]  # the record goes once the directory has


def test_an_old_version_that_cannot_be_renamed_is_named_by_prune(
    dirs: tuple[Path, Path]
) -> None:
    state, site = dirs
    with store_at(state, site, keep_versions=1, grace=0) as store:
        v1 = publish_model(store, "m", versioned_model(1))
        with immutable(only_version(site, "m"), site):
            v2 = publish_model(store, "m", versioned_model(2))
            assert store.current("m") == v2
            with pytest.raises(StorageError) as err:
                store.prune("m")
        assert err.value.file == f"{site}/m/versions/{v1.id}"
        assert str(err.value) == (f"model m: file {site}/m/versions/{v1.id}: cannot remove "
                                  "old version: Operation not permitted")
        assert store.prune("m") == [v1.id]


async def test_a_sync_whose_prune_fails_is_a_published_sync(
    origin: Origin, tmp_path: Path
) -> None:
    async with open_syncer(tmp_path, keep_versions=1) as env:
        url = publish_on(origin, "m", versioned_model(1, subdir="w"))
        assert (await sync(env, "m", url)).ok
        with immutable(only_version(env.site, "m") / "w", env.site):
            publish_on(origin, "m", versioned_model(2, subdir="w"))
            result = await sync(env, "m", url)
        assert result.ok and result.changed and result.error is None
        assert result.version == assert_published(env.site, "m", versioned_model(2, subdir="w"))


def test_the_service_emits_published_when_the_prune_after_it_fails(
    origin: Origin, tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    url = publish_on(origin, "m", versioned_model(1, subdir="w"))
    with short_dir() as sockets, NotifySocket(sockets / "notify") as notify:
        config = write_config(conf, {"m": url}, socket=str(sockets / "ctl.sock"),
                              keep_versions=1)
        with ServiceProcess(config, tmp_path / "service.log", notify=notify,
                            env={GRACE_ENV: "0"}) as svc:
            svc.start()
            svc.wait_event("published", model="m")
            with immutable(only_version(conf / "site", "m") / "w", conf / "site"):
                cursor = svc.last_event_id()
                publish_on(origin, "m", versioned_model(2, subdir="w"))
                svc.client.post("/v1/models/m/sync")
                event = svc.wait_event("published", model="m", since=cursor)
                assert event["version"] == assert_published(
                    conf / "site", "m", versioned_model(2, subdir="w"))
                assert not [e for e in svc.events_since(cursor) if e["type"] == "sync-failed"]
                assert svc.model("m")["state"] != "error"
                assert "cannot remove old version" in svc.log()
            assert svc.stop() == 0
