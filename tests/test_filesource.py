"""``file://`` models (daemon/filesource.py): a directory on disk is an origin, read
through the same Syncer, with (size, mtime_ns) as validators.

Each sync is a real ``shardsync sync`` process on real directories; what it read is
judged from what it published and from its own report (``received``, ``files_fetched``),
and, for "reads nothing", from bytes changed under unchanged validators: a process that
read them would publish them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from storehelpers import ModelFiles, sha256, store_at, tfjs_model, write_model
from synchelpers import assert_published, run_cli, write_config

from shardsync.daemon.config import load_config
from shardsync.daemon.errors import ConfigError, UpstreamError
from shardsync.daemon.filesource import read_file, validators_of
from shardsync.daemon.urls import file_path, file_url

SHARD = "group1-shard1of2.bin"


def model(n: int) -> ModelFiles:
    return tfjs_model("graph-model", [{SHARD: bytes([n]) * 8192,
                                       "group1-shard2of2.bin": bytes([n + 1]) * 4096}], tag=n)


def sync_json(config: Path) -> tuple[int, dict[str, Any]]:
    run = run_cli("sync", "-c", config, "--json")
    return run.returncode, json.loads(run.stdout)["models"][0]


@pytest.fixture
def usb(tmp_path: Path) -> Path:
    return tmp_path / "usb" / "m"


def test_a_file_model_syncs_then_a_recheck_reads_nothing(tmp_path: Path, usb: Path) -> None:
    manifest = write_model(usb, model(1))
    config = write_config(tmp_path / "conf", {"m": file_url(manifest)})
    status, first = sync_json(config)
    assert status == 0 and first["changed"] and first["files_fetched"] == 2, first
    version = assert_published(tmp_path / "conf" / "site", "m", model(1))

    # Other bytes of the same length under the same (size, mtime_ns), and no read
    # permission (for a non-root run): a re-check that read anything would fail or
    # publish them; one that only stats finds nothing changed.
    shard = usb / SHARD
    st = shard.stat()
    shard.write_bytes(b"\x07" * 8192)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    shard.chmod(0)
    status, again = sync_json(config)
    assert status == 0, again
    assert (again["changed"], again["received"], again["files_fetched"]) == (False, 0, 0), again
    assert again["files_reused"] == 2 and again["version"] == version
    assert_published(tmp_path / "conf" / "site", "m", model(1))

    # A new mtime is a new validator: the file is read, and the new bytes published.
    shard.chmod(0o644)
    write_model(usb, model(2))
    os.utime(usb / SHARD, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    status, third = sync_json(config)
    assert status == 0 and third["changed"], third
    assert assert_published(tmp_path / "conf" / "site", "m", model(2)) != version


def test_a_shard_that_is_a_symlink_is_refused(tmp_path: Path, usb: Path) -> None:
    manifest = write_model(usb, model(1))
    outside = tmp_path / "outside.bin"
    (usb / SHARD).rename(outside)
    (usb / SHARD).symlink_to(outside)
    config = write_config(tmp_path / "conf", {"m": file_url(manifest)})
    run = run_cli("sync", "-c", config)
    assert run.returncode == 1, run.stderr
    assert "model m" in run.stderr and SHARD in run.stderr and "symbolic link" in run.stderr
    assert not (tmp_path / "conf" / "site" / "m").exists()


def test_a_shard_longer_than_its_group_is_refused_before_it_is_read(
        tmp_path: Path, usb: Path) -> None:
    manifest = write_model(usb, model(1))
    (usb / SHARD).write_bytes(b"\x01" * (8192 + 4096 + 1))  # past the whole group
    config = write_config(tmp_path / "conf", {"m": file_url(manifest)})
    run = run_cli("sync", "-c", config)
    assert run.returncode == 1
    assert "model m" in run.stderr and SHARD in run.stderr and "larger than its weight group" \
        in run.stderr, run.stderr


def test_a_missing_shard_says_not_found(tmp_path: Path, usb: Path) -> None:
    manifest = write_model(usb, model(1))
    (usb / SHARD).unlink()
    config = write_config(tmp_path / "conf", {"m": file_url(manifest)})
    run = run_cli("sync", "-c", config)
    assert run.returncode == 1 and "not found" in run.stderr and SHARD in run.stderr, run.stderr


@pytest.mark.parametrize("url, why", [
    ("file://host/usb/m/model.json", "names a host"),
    ("file:///usb/../etc/model.json", "'..' segment"),
    ("file:///usb/./m/model.json", "'.'"),
    ("file:///usb/m/model.json?x=1", "query"),
    ("file:///usb/m/", "empty"),
    ("ftp://host/m/model.json", "or be file:///path"),
])
def test_config_refuses_bad_file_urls(tmp_path: Path, url: str, why: str) -> None:
    config = write_config(tmp_path, {"m": url})
    with pytest.raises(ConfigError, match="url") as info:
        load_config(config)
    assert why in str(info.value)


def test_config_accepts_file_urls() -> None:
    assert file_path("file:///media/usb/m/model.json") == "/media/usb/m/model.json"
    assert file_path("file://localhost/media/a%20b/model.json") == "/media/a b/model.json"
    assert file_url("/media/a b/model.json") == "file:///media/a%20b/model.json"


def test_config_loads_a_file_model(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"m": "file:///media/usb/m/model.json"}))
    assert config.model("m").url == "file:///media/usb/m/model.json"


def test_a_fifo_in_place_of_a_shard_is_refused_without_blocking(tmp_path: Path, usb: Path) -> None:
    manifest = write_model(usb, model(1))
    (usb / SHARD).unlink()
    os.mkfifo(usb / SHARD)  # nobody writes it: a blocking open would hang the sync
    config = write_config(tmp_path / "conf", {"m": file_url(manifest)})
    run = run_cli("sync", "-c", config, timeout=60)
    assert run.returncode == 1 and "not a regular file" in run.stderr, run.stderr


def test_a_file_that_changes_while_it_is_read_is_not_stored(tmp_path: Path, usb: Path) -> None:
    write_model(usb, model(1))
    shard = usb / SHARD

    def touch(_: int) -> None:  # the copy onto the stick is still going on
        os.utime(shard, ns=(0, shard.stat().st_mtime_ns + 1))

    url = file_url(shard)
    with store_at(tmp_path / "state", tmp_path / "site") as store:
        with pytest.raises(UpstreamError, match="changed while it was read"):
            read_file(url, store, validators=None, max_size=None, source=None,
                      expected_digest=None, limit="its weight group", progress=touch)
        assert not store.has_ingest(url) and store.downloaded() == []
        read = read_file(url, store, validators=None, max_size=None, source=None,
                         expected_digest=None, limit="its weight group")
        assert read.digest == sha256(shard.read_bytes())
        assert read.validators == validators_of(shard.stat())
