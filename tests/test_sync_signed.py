"""Signed models through a real nginx origin: what is accepted, what is refused, and what
a signature saves (docs/design.md, "Signed models").

Keys and signatures are made by shardsync's own signing code on real files in the
origin's directory; nginx serves them with its own validators; its access log counts
what crossed the wire. After every refusal the previous version is still what the site
serves, byte for byte.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from origin import Origin
from storehelpers import ModelFiles, tfjs_model, write_model
from synchelpers import NginxOrigin, SyncEnv, assert_published, open_syncer, serve_directory

from shardsync.daemon.config import ModelConfig
from shardsync.daemon.signing import (
    canonical,
    generate_key,
    key_id,
    parse_public_key,
    sign_manifest,
)
from shardsync.daemon.sync import SyncResult

DAY = 86400.0
SHARDS = ("group1-shard1of2.bin", "group1-shard2of2.bin")

#: mtimes for rewritten signature files, each new: nginx's ETag is mtime (seconds) and
#: size, and two signatures of one length written within a second would share it (a
#: real publisher re-signs minutes apart; a test, microseconds).
_MTIMES = itertools.count(1_700_000_000, 10)


def stamp(path: Path) -> None:
    t = next(_MTIMES)
    os.utime(path, (t, t))


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxOrigin]:
    root = tmp_path / "origin"
    root.mkdir()
    with serve_directory(root, tmp_path / "nginx") as server:
        yield server


class Key:
    """A publisher's key pair: the PEM file and the raw public key."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.pem"
        self.public = parse_public_key(generate_key(self.path))
        self.id = key_id(self.public)


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return Key(tmp_path, "a")


def model_v(n: int) -> ModelFiles:
    """Release ``n`` of the model: two 8 KiB shards whose bytes depend on ``n``."""
    return tfjs_model("graph-model", [{SHARDS[0]: bytes([n]) * 8192,
                                       SHARDS[1]: bytes([n + 1]) * 8192}], tag=n)


def release(nginx: NginxOrigin, model: ModelFiles, key: Key | None, prefix: str = "m",
            **sign: Any) -> Path:
    """Put ``model`` on the origin under ``prefix/`` and, with ``key``, sign it there (as
    ``shardsync sign`` does); return the manifest's path on the origin."""
    manifest = write_model(nginx.root / prefix, model)
    if key is not None:
        sign.setdefault("expires_in", 90 * DAY)
        sign_manifest(key.path, manifest, **sign)
        stamp(sig_path(manifest))
    return manifest


def config(nginx: NginxOrigin, *keys: Key, prefix: str = "m", name: str = "m") -> ModelConfig:
    return ModelConfig(name, nginx.url_for(f"{prefix}/model.json"), 1800.0,
                       public_keys=tuple(k.public for k in keys))


def sig_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".sig.json")


def resign(manifest: Path, key: Key, change: Any) -> None:
    """Edit the ``signed`` part of the signature file with ``change`` and sign it again
    with ``key``: a signature its publisher really made, with other contents."""
    path = sig_path(manifest)
    doc = json.loads(path.read_bytes())
    change(doc["signed"])
    private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    sig = private.sign(canonical(doc["signed"]))  # type: ignore[union-attr, call-arg]
    doc["signatures"] = [{"keyid": key.id, "sig": base64.b64encode(sig).decode()}]
    path.write_text(json.dumps(doc))
    stamp(path)


async def first_release(env: SyncEnv, nginx: NginxOrigin, key: Key) -> tuple[ModelConfig, str]:
    """Release 1, signed by ``key``, synced: (its config, the published version)."""
    release(nginx, model_v(1), key)
    cfg = config(nginx, key)
    result = await env.syncer.sync(cfg)
    assert result.ok and result.changed, result.error
    return cfg, assert_published(env.site, "m", model_v(1))


def assert_refused(env: SyncEnv, result: SyncResult, version: str, *reasons: str) -> None:
    """The sync failed naming the model and every one of ``reasons``, and release 1
    (``version``) is still what the site serves."""
    assert not result.ok and result.version == version
    message = str(result.error)
    assert message.startswith("model m: "), message
    for reason in reasons:
        assert reason in message, message
    assert assert_published(env.site, "m", model_v(1)) == version


# -- accepted --------------------------------------------------------------------------


async def test_a_signed_model_is_published_with_its_signature_and_rechecked_by_it_alone(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        _, version = await first_release(env, nginx, key)
        # The signature is kept with the version, beside the pinned manifest.
        published = env.site / "m" / "versions" / version / "model.json.sig.json"
        assert published.read_bytes() == (nginx.root / "m" / "model.json.sig.json").read_bytes()
        record = env.store.trust_record("m")
        assert record is not None and record["version"] == 1 and record["keyid"] == key.id
        assert record["model_version"] == version

        nginx.clear()
        result = await env.syncer.sync(config(nginx, key))
    assert result.ok and not result.changed and result.version == version
    # A warm check asks only for the signature: every file it lists is held already.
    assert [(h.uri, h.status) for h in nginx.hits()] == [("/m/model.json.sig.json", 304)]


async def test_any_one_trusted_key_is_enough_and_rotation_replaces_the_old_key(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    new = Key(tmp_path, "b")
    async with open_syncer(tmp_path) as env:
        _, v1 = await first_release(env, nginx, key)
        # Rotation, step 1: both keys trusted; release 2 signed by the new key alone.
        release(nginx, model_v(2), new)
        result = await env.syncer.sync(config(nginx, key, new))
        assert result.ok and result.changed, result.error
        assert env.store.trust_record("m")["keyid"] == new.id  # type: ignore[index]
        # Step 2: the old key is removed from the config; release 3 signed by the new key.
        release(nginx, model_v(3), new)
        result = await env.syncer.sync(config(nginx, new))
        assert result.ok and result.changed, result.error
        v3 = assert_published(env.site, "m", model_v(3))
        # A release signed by the removed key is now refused, and release 3 stays.
        release(nginx, model_v(4), key, version=9)
        result = await env.syncer.sync(config(nginx, new))
    assert not result.ok and result.version == v3
    assert "not signed by a trusted key" in str(result.error) and key.id[:16] in str(result.error)
    assert assert_published(env.site, "m", model_v(3)) == v3 != v1


async def test_files_the_store_holds_by_their_signed_digest_are_never_requested(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        _, v1 = await first_release(env, nginx, key)
        # The same model under another URL (a new path, new validators), signed again:
        # nothing but its signature crosses the wire.
        release(nginx, model_v(1), key, prefix="moved")
        nginx.clear()
        result = await env.syncer.sync(config(nginx, key, prefix="moved", name="moved"))
        assert result.ok and result.files_fetched == 0, result.error
        assert result.received == sig_path(nginx.root / "moved" / "model.json").stat().st_size
        assert [h.uri for h in nginx.hits()] == ["/moved/model.json.sig.json"]
        assert_published(env.site, "moved", model_v(1))
        # Re-signed in place (a new signature version, same files): the same again.
        sign_manifest(key.path, nginx.root / "m" / "model.json", expires_in=90 * DAY)
        stamp(nginx.root / "m" / "model.json.sig.json")
        nginx.clear()
        result = await env.syncer.sync(config(nginx, key))
    assert result.ok, result.error
    assert [h.uri for h in nginx.hits()] == ["/m/model.json.sig.json"]
    assert result.signature is not None and result.signature["version"] == 2


# -- refused ---------------------------------------------------------------------------


async def test_no_signature_is_refused_and_nothing_is_published(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    release(nginx, model_v(1), None)
    async with open_syncer(tmp_path) as env:
        result = await env.syncer.sync(config(nginx, key))
        assert not result.ok and result.version is None
        assert str(result.error).startswith("model m: file http://")
        assert "model.json.sig.json: no signature" in str(result.error)
        assert not (env.site / "m").exists()
        # Once published signed, a release without a signature leaves it published.
        _, v1 = await first_release(env, nginx, key)
        release(nginx, model_v(2), None)
        sig_path(nginx.root / "m" / "model.json").unlink()
        nginx.clear()
        assert_refused(env, await env.syncer.sync(config(nginx, key)), v1, "no signature")
    # The signature first; after its 404 the manifest, read only for a shardsync site's
    # claim (docs/design.md, "A published site as an origin"); no shard is asked for.
    assert [(h.uri, h.status) for h in nginx.hits()] == [
        ("/m/model.json.sig.json", 404), ("/m/model.json", 200)]


async def test_a_signature_that_does_not_verify_is_refused(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        manifest = release(nginx, model_v(2), key)
        # The signed list edited after signing (a shard's digest swapped for another).
        doc = json.loads(sig_path(manifest).read_bytes())
        doc["signed"]["files"][SHARDS[0]]["sha256"] = "0" * 64
        sig_path(manifest).write_text(json.dumps(doc))
        stamp(sig_path(manifest))
        assert_refused(env, await env.syncer.sync(cfg), v1,
                       "no valid signature by a trusted key", key.id[:16])
        # The signature bytes themselves damaged.
        release(nginx, model_v(2), key)
        doc = json.loads(sig_path(manifest).read_bytes())
        raw = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
        raw[0] ^= 1
        doc["signatures"][0]["sig"] = base64.b64encode(raw).decode()
        sig_path(manifest).write_text(json.dumps(doc))
        stamp(sig_path(manifest))
        assert_refused(env, await env.syncer.sync(cfg), v1, "no valid signature")
        # Not JSON at all.
        sig_path(manifest).write_text("<html>")
        stamp(sig_path(manifest))
        assert_refused(env, await env.syncer.sync(cfg), v1, "the signature is not JSON")


async def test_a_signature_by_an_untrusted_key_is_refused(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    other = Key(tmp_path, "other")
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        release(nginx, model_v(2), other)
        assert_refused(env, await env.syncer.sync(cfg), v1, "not signed by a trusted key",
                       f"signed by key ids {other.id[:16]}", f"trusted: {key.id[:16]}")


async def test_a_shard_changed_after_signing_with_the_same_length_is_refused(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        manifest = release(nginx, model_v(2), key)
        (manifest.parent / SHARDS[1]).write_bytes(b"\xee" * 8192)  # same length, other bytes
        result = await env.syncer.sync(cfg)
        assert_refused(env, result, v1, f"file {nginx.url_for('m/' + SHARDS[1])}",
                       "SHA-256 differs")
        assert not list((env.state / "partial").iterdir())  # bytes that failed are not kept


async def test_a_manifest_changed_after_signing_is_refused_before_any_shard(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        manifest = release(nginx, model_v(2), key)
        manifest.write_bytes(manifest.read_bytes().replace(b"}", b" }", 1))
        nginx.clear()
        assert_refused(env, await env.syncer.sync(cfg), v1, "file " + cfg.url,
                       "manifest is longer than its signature lists")
        assert [h.uri for h in nginx.hits()] == ["/m/model.json.sig.json", "/m/model.json"]


async def test_a_shard_longer_than_listed_is_refused_without_reading_past_the_length(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        manifest = release(nginx, model_v(2), key)
        # (Its first shard holds release 1's second shard's bytes: never asked for.)
        with open(manifest.parent / SHARDS[1], "ab") as f:
            f.write(b"\0" * 4 * 1024 * 1024)  # 4 MiB more than the 8 KiB signed
        result = await env.syncer.sync(cfg)
        assert_refused(env, result, v1, f"file {nginx.url_for('m/' + SHARDS[1])}",
                       "file is larger than the length its signature lists",
                       "expected at most 8192")
    # Not one byte of its body was read (nginx said its length first): the file bytes
    # received are the signature's alone.
    assert result.received == sig_path(manifest).stat().st_size


async def test_a_shard_missing_from_the_signed_files_is_refused(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        manifest = release(nginx, model_v(2), key)
        resign(manifest, key, lambda signed: signed["files"].pop(SHARDS[1]))
        nginx.clear()
        assert_refused(env, await env.syncer.sync(cfg), v1,
                       f"shard '{SHARDS[1]}' is not in the signed files")
        assert not any(SHARDS[0] in h.uri or SHARDS[1] in h.uri for h in nginx.hits())


async def test_a_lower_signature_version_is_refused_also_after_a_restart(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        release(nginx, model_v(1), key, version=5)
        cfg = config(nginx, key)
        assert (await env.syncer.sync(cfg)).ok
        v1 = assert_published(env.site, "m", model_v(1))
        release(nginx, model_v(2), key, version=4)  # an old release, validly signed
        assert_refused(env, await env.syncer.sync(cfg), v1,
                       "signature version 4 is lower than the last accepted, 5",
                       "rollback refused")
    async with open_syncer(tmp_path) as env:  # a new process: the store remembers
        assert_refused(env, await env.syncer.sync(cfg), v1, "version 4 is lower than")
        release(nginx, model_v(2), key, version=5)  # the same version again is a re-check
        result = await env.syncer.sync(cfg)
        assert result.ok and result.changed, result.error


async def test_an_expired_signature_is_refused(
    nginx: NginxOrigin, tmp_path: Path, key: Key
) -> None:
    async with open_syncer(tmp_path) as env:
        cfg, v1 = await first_release(env, nginx, key)
        # Signed 100 days ago for 90 days: a frozen origin replaying its last answer.
        release(nginx, model_v(2), key, now=time.time() - 100 * DAY)
        assert_refused(env, await env.syncer.sync(cfg), v1, "the signature expired at",
                       "sign the model again")


async def test_a_body_without_a_length_is_read_no_further_than_the_signed_length(
    tmp_path: Path, key: Key
) -> None:
    """The test origin sends the shard endlessly, with no Content-Length: the fetch stops
    within one read of the signed 8 KiB (the group's size would allow as much too, but
    the signature is the bound that holds whatever the manifest says)."""
    root = tmp_path / "origin"
    manifest = write_model(root / "m", model_v(1))
    sign_manifest(key.path, manifest, expires_in=90 * DAY)
    with Origin(root) as origin:
        origin.fault_endless(f"m/{SHARDS[0]}")
        cfg = ModelConfig("m", origin.url_for("m/model.json"), 1800.0,
                          public_keys=(key.public,))
        async with open_syncer(tmp_path) as env:
            result = await env.syncer.sync(cfg)
            assert not result.ok and not (env.site / "m").exists()
            assert f"file {origin.url_for('m/' + SHARDS[0])}: body is longer" \
                in str(result.error)
            assert "expected at most 8192" in str(result.error)
        assert not list((env.state / "partial").iterdir())
    # What came over the network: the signature, the other shard, and what a socket read
    # or two of the endless one brought before the first that went past 8 KiB.
    assert result.received < 1024 * 1024
