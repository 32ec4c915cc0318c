"""`shardsync export` and `shardsync import` (daemon/exchange.py), as real processes.

A gateway (one config, one state/site) syncs from a real origin and exports to a "USB
stick" (a directory); a kiosk (another config, fresh state/site, the same model URL)
imports it with the origin stopped, so any network use would fail. What the kiosk
publishes is checked from its site's raw files against the origin's bytes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from origin import Origin
from storehelpers import ModelFiles, mounted_tmpfs, tfjs_model, write_model
from synchelpers import assert_published, run_cli, write_config

from shardsync.daemon.signing import generate_key, sign_manifest

SHARDS = ("group1-shard1of2.bin", "group1-shard2of2.bin")
DAY = 86400.0


def model_v(n: int) -> ModelFiles:
    return tfjs_model("graph-model", [{SHARDS[0]: bytes([n]) * 8192,
                                       SHARDS[1]: bytes([n + 1]) * 4096}], tag=n)


class Site:
    """One machine: a config naming the model ``m`` at ``url`` (with ``keys``)."""

    def __init__(self, root: Path, url: str, keys: list[str] | None = None) -> None:
        extra = {"m": {"public_keys": keys}} if keys else None
        self.root = root
        self.site = root / "site"
        self.config = write_config(root, {"m": url}, model_keys=extra)

    def run(self, *args: str | Path) -> tuple[int, dict[str, Any], str]:
        run = run_cli(args[0], "-c", self.config, *args[1:], "--json")
        return run.returncode, json.loads(run.stdout), run.stderr


def release(origin: Origin, model: ModelFiles, key: Path | None) -> None:
    assert origin.root is not None
    manifest = write_model(origin.root / "m", model)
    if key is not None:
        sign_manifest(key, manifest, expires_in=90 * DAY)


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "key.pem"
    return path, generate_key(path)


@pytest.mark.parametrize("signed", [False, True])
def test_export_then_import_with_the_origin_stopped(
        tmp_path: Path, key: tuple[Path, str], signed: bool) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    keys = [key[1]] if signed else None
    usb = tmp_path / "usb"
    with Origin(root) as origin:
        release(origin, model_v(1), key[0] if signed else None)
        url = origin.url_for("m/model.json")
        gateway = Site(tmp_path / "gateway", url, keys)
        status, doc, err = gateway.run("sync")
        assert status == 0, err
        status, doc, err = gateway.run("export", usb)
        assert status == 0, err
        port = origin.port
    (exported,) = doc["models"]
    version = exported["version"]
    assert exported["ok"] and exported["files"] == 3 + signed

    # The export is the origin's directory, byte for byte (the signature included).
    names = ["model.json", *SHARDS] + (["model.json.sig.json"] if signed else [])
    assert sorted(p.name for p in (usb / "m").iterdir()) == sorted(names)
    for name in names:
        assert (usb / "m" / name).read_bytes() == (root / "m" / name).read_bytes(), name

    kiosk = Site(tmp_path / "kiosk", url, keys)
    status, doc, err = kiosk.run("import", usb)  # the origin is stopped: no network
    assert status == 0, err
    (result,) = doc["models"]
    assert result["changed"] and result["version"] == version, result
    assert assert_published(kiosk.site, "m", model_v(1)) == version
    if signed:
        sig = kiosk.site / "m" / "versions" / version / "model.json.sig.json"
        assert sig.read_bytes() == (root / "m" / "model.json.sig.json").read_bytes()

    # Back online, the same origin: a signed model's check asks for the signature alone
    # (every file it lists is held); an unsigned one has no validators for the origin's
    # URLs yet, so it downloads them once, finds the same version and publishes nothing.
    with Origin(root, port=port) as origin:
        status, doc, err = kiosk.run("sync")
        assert status == 0, err
        (again,) = doc["models"]
        assert not again["changed"] and again["version"] == version, again
        asked = sorted(e.path for e in origin.requests())
        if signed:
            assert asked == ["m/model.json.sig.json"], asked
            assert again["files_fetched"] == 0
        else:
            assert asked == sorted(["m/model.json", *(f"m/{s}" for s in SHARDS)]), asked
            origin.reset_counters()
            status, doc, err = kiosk.run("sync")  # from now on: conditional, all 304
            assert status == 0 and doc["models"][0]["received"] == 0, err
            assert {e.status for e in origin.requests()} == {304}


def tamper_same_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


@pytest.mark.parametrize("signed, damage, reason", [
    (True, tamper_same_length, "SHA-256 differs"),
    (False, truncate, "group 1"),
    (True, truncate, "SHA-256 differs"),  # as over HTTP: the commit checks the digest
])
def test_a_damaged_import_is_refused_and_the_previous_version_kept(
        tmp_path: Path, key: tuple[Path, str], signed: bool, damage: Any, reason: str) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    keys = [key[1]] if signed else None
    usb = tmp_path / "usb"
    with Origin(root) as origin:
        url = origin.url_for("m/model.json")
        gateway = Site(tmp_path / "gateway", url, keys)
        kiosk = Site(tmp_path / "kiosk", url, keys)
        release(origin, model_v(1), key[0] if signed else None)
        assert gateway.run("sync")[0] == 0 and gateway.run("export", usb)[0] == 0
        status, doc, err = kiosk.run("import", usb)
        assert status == 0, err
        v1 = doc["models"][0]["version"]
        release(origin, model_v(2), key[0] if signed else None)
        assert gateway.run("sync")[0] == 0 and gateway.run("export", usb)[0] == 0
    damage(usb / "m" / SHARDS[0])
    status, doc, err = kiosk.run("import", usb)
    assert status == 1
    (result,) = doc["models"]
    assert not result["ok"] and result["version"] == v1
    message = result["error"]
    assert message.startswith("model m: ") and SHARDS[0] in message and reason in message, message
    assert assert_published(kiosk.site, "m", model_v(1)) == v1


def test_export_refuses_to_write_through_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    with Origin(root) as origin:
        release(origin, model_v(1), None)
        gateway = Site(tmp_path / "gateway", origin.url_for("m/model.json"))
        assert gateway.run("sync")[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "m").symlink_to(elsewhere)  # the model's directory is a link
    status, doc, _ = gateway.run("export", usb)
    assert status == 1 and "symbolic link" in doc["models"][0]["error"]
    assert list(elsewhere.iterdir()) == []

    (usb / "m").unlink()
    (usb / "m").mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    (usb / "m" / SHARDS[1]).symlink_to(target)  # a shard's place is a link
    status, doc, _ = gateway.run("export", usb)
    message = doc["models"][0]["error"]
    assert status == 1 and SHARDS[1] in message and "symbolic link" in message, message
    assert target.read_bytes() == b"keep me"
    assert not (usb / "m" / "model.json").exists()  # the manifest goes last


def test_import_refuses_symlinks(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    write_model(tmp_path / "real", model_v(1))
    usb.mkdir()
    (usb / "m").symlink_to(tmp_path / "real")
    kiosk = Site(tmp_path / "kiosk", "http://127.0.0.1:9/m/model.json")
    run = run_cli("import", "-c", kiosk.config, usb)
    assert run.returncode == 1 and "symbolic link" in run.stderr and "model m" in run.stderr

    (usb / "m").unlink()
    write_model(usb / "m", model_v(1))
    shard = usb / "m" / SHARDS[0]
    shard.unlink()
    shard.symlink_to(tmp_path / "real" / SHARDS[0])
    run = run_cli("import", "-c", kiosk.config, usb)
    assert run.returncode == 1 and "symbolic link" in run.stderr and SHARDS[0] in run.stderr
    assert not (kiosk.site / "m").exists()


def test_import_finds_nothing_or_an_unknown_name(tmp_path: Path) -> None:
    kiosk = Site(tmp_path / "kiosk", "http://127.0.0.1:9/m/model.json")
    (tmp_path / "usb").mkdir()
    run = run_cli("import", "-c", kiosk.config, tmp_path / "usb")
    assert run.returncode == 1 and "no configured model found" in run.stderr, run.stderr
    run = run_cli("import", "-c", kiosk.config, tmp_path / "usb", "nosuch")
    assert run.returncode == 2 and "nosuch" in run.stderr, run.stderr
    run = run_cli("import", "-c", kiosk.config, tmp_path / "usb", "m")  # named: must be there
    assert run.returncode == 1 and "not found" in run.stderr, run.stderr


def test_export_of_a_model_never_synced_fails_that_model(tmp_path: Path) -> None:
    kiosk = Site(tmp_path / "kiosk", "http://127.0.0.1:9/m/model.json")
    run = run_cli("export", "-c", kiosk.config, tmp_path / "usb")
    assert run.returncode == 1 and "has no published version" in run.stderr, run.stderr
    assert os.listdir(tmp_path / "usb") == []


def test_export_to_a_mounted_stick_and_import_from_it(tmp_path: Path) -> None:
    """A real tmpfs as the stick: another filesystem than the store's (no hardlinks)."""
    root = tmp_path / "origin"
    root.mkdir()
    with Origin(root) as origin:
        release(origin, model_v(1), None)
        url = origin.url_for("m/model.json")
        gateway = Site(tmp_path / "gateway", url)
        assert gateway.run("sync")[0] == 0
    with mounted_tmpfs(tmp_path / "stick", "16m") as stick:
        os.umask(0o077)  # files a web server must read, whatever the umask
        try:
            status, doc, err = gateway.run("export", stick)
        finally:
            os.umask(0o022)
        assert status == 0, err
        assert stat.S_IMODE((stick / "m").stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in (stick / "m").iterdir()} == {0o644}
        assert [p.name for p in (stick / "m").iterdir() if p.name.startswith(".tmp-")] == []
        kiosk = Site(tmp_path / "kiosk", url)
        status, doc, err = kiosk.run("import", stick)
        assert status == 0, err
    assert assert_published(kiosk.site, "m", model_v(1)) == doc["models"][0]["version"]
