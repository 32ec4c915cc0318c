"""``shardsync keygen`` and ``shardsync sign`` as a publisher runs them (real subprocesses,
real files), the ``.sig.json`` they write checked against DESIGN.md's format, and
``public_keys`` in the config; then the same signatures through ``shardsync sync``
against nginx, across process restarts.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from storehelpers import tfjs_model, write_model
from synchelpers import NginxOrigin, assert_published, run_cli, serve_directory, write_config

from shardsync.daemon.config import load_config
from shardsync.daemon.errors import ConfigError
from shardsync.daemon.signing import canonical, parse_public_key, verify_signature

SHARDS = {"group1-shard1of2.bin": b"\x01" * 4096, "group1-shard2of2.bin": b"\x02" * 1000}


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxOrigin]:
    root = tmp_path / "origin"
    root.mkdir()
    with serve_directory(root, tmp_path / "nginx") as server:
        yield server


def keygen(path: Path) -> str:
    done = run_cli("keygen", path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
    tmp_path: Path
) -> None:
    key = tmp_path / "publisher.pem"
    public = keygen(key)
    assert public.startswith("ed25519:") and len(parse_public_key(public)) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = run_cli("keygen", key)
    assert again.returncode == 1 and again.stdout == ""
    assert f"file {key}: already exists; refusing to overwrite it" in again.stderr
    assert key.read_bytes() == pem
    assert [p.name for p in tmp_path.iterdir()] == ["publisher.pem"]  # no temporaries left


def test_sign_writes_the_design_format_and_counts_versions_up(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    public = parse_public_key(keygen(key))
    model = tfjs_model("graph-model", [SHARDS], tag="s")
    # A publisher's directory: TF.js's own "./" prefix on the paths is allowed.
    model = dataclasses.replace(model, manifest=model.manifest.replace(b'"group1-',
                                                                       b'"./group1-'))
    manifest = write_model(tmp_path / "pub", model)
    before = time.time()
    done = run_cli("sign", "--key", key, manifest, "--expires", "30d")
    assert done.returncode == 0, done.stderr
    sig = manifest.with_name("model.json.sig.json")
    assert str(sig) in done.stderr and "version 1" in done.stderr
    doc = json.loads(sig.read_bytes())
    assert list(doc) == ["signed", "signatures"]
    signed = doc["signed"]
    assert signed["type"] == "shardsync-signature" and signed["spec"] == 1
    assert signed["version"] == 1
    assert signed["files"] == {
        "model.json": {"length": len(model.manifest),
                       "sha256": hashlib.sha256(model.manifest).hexdigest()},
        **{p: {"length": len(b), "sha256": hashlib.sha256(b).hexdigest()}
           for p, b in SHARDS.items()}}
    expires = time.mktime(time.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 30 * 86400 - 2 <= expires <= time.time() + 30 * 86400 + 1
    (entry,) = doc["signatures"]
    assert entry["keyid"] == hashlib.sha256(public).hexdigest()
    # The signature covers exactly DESIGN.md's canonical form of "signed".
    payload = json.dumps(signed, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode()
    assert payload == canonical(signed)
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(entry["sig"]), payload)
    assert verify_signature(sig.read_bytes(), {public}, now=time.time()).version == 1

    assert run_cli("sign", "--key", key, manifest).returncode == 0
    assert json.loads(sig.read_bytes())["signed"]["version"] == 2  # the previous file's + 1
    assert run_cli("sign", "--key", key, manifest, "--version", "7").returncode == 0
    assert json.loads(sig.read_bytes())["signed"]["version"] == 7


def test_sign_refuses_what_it_cannot_sign_truthfully(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    keygen(key)
    manifest = write_model(tmp_path / "pub", tfjs_model("graph-model", [SHARDS], tag="s"))
    (manifest.parent / "group1-shard2of2.bin").unlink()
    missing = run_cli("sign", "--key", key, manifest)
    assert missing.returncode == 1
    assert "group1-shard2of2.bin: listed in the manifest but missing" in missing.stderr
    assert not manifest.with_name("model.json.sig.json").exists()
    bad = run_cli("sign", "--key", key, manifest, "--expires", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr
    not_a_key = run_cli("sign", "--key", manifest, manifest)
    assert not_a_key.returncode == 1 and "not an unencrypted PEM private key" in not_a_key.stderr


def test_public_keys_in_the_config_are_checked_with_the_key_and_line(tmp_path: Path) -> None:
    good = keygen(tmp_path / "k.pem")
    cfg = write_config(tmp_path / "c", {"m": "http://example.com/m/model.json"},
                       model_keys={"m": {"public_keys": [good]}})
    assert load_config(cfg).models[0].public_keys == (parse_public_key(good),)
    for value, reason in (("ed25519:AAAA", "is 32 bytes, not 3"),
                          ("rsa:AAAA", "is not a public key like"),
                          ("ed25519:%%%", "not valid base64")):
        cfg = write_config(tmp_path / "c", {"m": "http://example.com/m/model.json"},
                           model_keys={"m": {"public_keys": [value]}})
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert "model[1].public_keys" in str(info.value) and reason in str(info.value)
        assert f"{cfg}:8:" in str(info.value)


def test_sync_refuses_a_rollback_after_the_process_restarts(
    nginx: NginxOrigin, tmp_path: Path
) -> None:
    """Each `shardsync sync` is a new process: only state_dir remembers the version."""
    key = tmp_path / "k.pem"
    public = keygen(key)
    v1 = tfjs_model("graph-model", [SHARDS], tag="v1")
    manifest = write_model(nginx.root / "m", v1)
    assert run_cli("sign", "--key", key, manifest, "--version", "3").returncode == 0
    cfg = write_config(tmp_path / "svc", {"m": nginx.url_for("m/model.json")},
                       model_keys={"m": {"public_keys": [public]}})
    first = run_cli("sync", "-c", cfg, "--json")
    assert first.returncode == 0, first.stderr
    published = assert_published(tmp_path / "svc" / "site", "m", v1)
    # The signature is a file of the version: verify and gc keep to it like any other.
    assert (tmp_path / "svc" / "site" / "m" / "versions" / published
            / "model.json.sig.json").read_bytes() == manifest.with_name(
                "model.json.sig.json").read_bytes()
    checked = run_cli("verify", "-c", cfg)
    assert checked.returncode == 0 and "0 problem(s)" in checked.stdout, checked.stderr
    assert run_cli("gc", "-c", cfg).returncode == 0
    assert run_cli("verify", "-c", cfg).returncode == 0

    v2 = tfjs_model("graph-model", [{**SHARDS, "group1-shard2of2.bin": b"\x03" * 1000}],
                    tag="v2")
    write_model(nginx.root / "m", v2)
    assert run_cli("sign", "--key", key, manifest, "--version", "2").returncode == 0
    # nginx's ETag is mtime (seconds) and size: make this file's differ from the last one's.
    os.utime(manifest.with_name("model.json.sig.json"), (1_700_000_000, 1_700_000_000))
    second = run_cli("sync", "-c", cfg, "--json")
    assert second.returncode == 1
    (result,) = json.loads(second.stdout)["models"]
    assert result["version"] == published
    assert result["error"].startswith("model m: file ")
    assert "signature version 2 is lower than the last accepted, 3" in result["error"]
    assert assert_published(tmp_path / "svc" / "site", "m", v1) == published
    record = json.loads((tmp_path / "svc" / "state" / "trust" / "m.json").read_text())
    assert record["version"] == 3 and record["model_version"] == published


def test_an_origins_public_keys_make_its_models_need_a_signature(
    tmp_path: Path, nginx: NginxOrigin
) -> None:
    # DESIGN.md: with public_keys on an [[origin]], "every model from here must carry a
    # valid signature"; a model elsewhere is not affected.
    key = tmp_path / "publisher.pem"
    public = keygen(key)
    model = tfjs_model("graph-model", [SHARDS])
    write_model(nginx.root / "m", model)
    write_model(nginx.root / "free", model)
    prefix = nginx.url_for("m/")
    conf = tmp_path / "conf"
    config = write_config(conf, {"m": nginx.url_for("m/model.json"),
                                 "free": nginx.url_for("free/model.json")})
    with open(config, "a") as f:
        f.write(f'\n[[origin]]\nprefix = "{prefix}"\npublic_keys = ["{public}"]\n')
    unsigned = run_cli("sync", "-c", config, "--json")
    assert unsigned.returncode == 1
    results = {m["name"]: m for m in json.loads(unsigned.stdout)["models"]}
    assert "no signature" in results["m"]["error"] and results["free"]["ok"]
    assert not (conf / "site" / "m").exists()
    assert run_cli("sign", "--key", key, nginx.root / "m" / "model.json").returncode == 0
    signed = run_cli("sync", "-c", config, "--json")
    assert signed.returncode == 0, signed.stdout
    assert_published(conf / "site", "m", model)
