"""A signed model through a shardsync site as origin, with real parts only
(docs/design.md, "A published site as an origin").

The publisher signs the model on the test origin with shardsync's own signing code; an
upstream ``shardsync sync`` with the key publishes it (its version holds the signature,
under ``versions/<id>/`` only); a real nginx serves that site_dir as ``shardsync
nginx-config`` prints it; a downstream ``shardsync sync``, with the key or without,
mirrors that nginx, whose access log counts what it cost. After every refusal the
downstream still serves what it served, byte for byte.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.webserver import NginxServer
from origin import Origin
from sitehelpers import SHARD, hits, model, serve_site, sync, sync_result
from storehelpers import ModelFiles, write_model
from synchelpers import assert_published, run_cli

from shardsync.daemon.signing import generate_key, sign_manifest

DAY = 86400.0
SIG = ".sig.json"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[NginxServer]:
    with serve_site(tmp_path) as server:
        yield server


@dataclass
class Setup:
    """The publisher's origin and key, the upstream (``up``) and downstream (``down``)
    directories, and the entry point URL the downstream syncs from."""

    origin: Origin
    site: NginxServer
    up: Path
    down: Path
    key: Path
    public: str
    up_keys: list[str]  # the keys the upstream trusts

    @property
    def url(self) -> str:
        return f"{self.site.url}/models/m/model.json"

    def release(self, files: ModelFiles, *, key: Path | None = None, **sign: Any) -> str:
        """Put ``files`` on the origin, signed by ``key`` (the publisher's by default),
        and sync the upstream, which trusts every key given so far; its version id."""
        assert self.origin.root is not None
        manifest = write_model(self.origin.root / "m", files)
        sign_manifest(key or self.key, manifest, expires_in=90 * DAY, **sign)
        return sync(self.up, self.origin.url_for("m/model.json"), public_keys=self.up_keys)

    def pinned(self, version: str, path: str) -> Path:
        """A file of the upstream's published ``version``, as nginx serves it."""
        return self.up / "site" / "m" / "versions" / version / path

    def uri(self, version: str, path: str) -> str:
        return f"/models/m/versions/{version}/{path}"


@pytest.fixture
def env(origin: Origin, site: NginxServer, tmp_path: Path) -> Setup:
    key = tmp_path / "publisher.pem"
    public = generate_key(key)
    return Setup(origin, site, tmp_path / "up", tmp_path / "down", key, public, [public])


def keyed(env: Setup) -> dict[str, Any]:
    return sync_result(env.down, env.url, public_keys=[env.public])


def assert_same_version(env: Setup, files: ModelFiles, version: str) -> None:
    """The downstream publishes upstream's ``version`` of ``files``: same id, the flat
    layout, every file (the signature too) byte for byte as upstream publishes it."""
    assert assert_published(env.down / "site", "m", files) == version
    down = env.down / "site" / "m" / "versions" / version
    assert not (down / "versions").exists()  # not nested under a version of its own
    assert (down / f"model.json{SIG}").read_bytes() \
        == env.pinned(version, f"model.json{SIG}").read_bytes()
    assert sorted(p.name for p in down.iterdir()) \
        == sorted(p.name for p in env.pinned(version, "").iterdir())


def assert_refused(env: Setup, result: dict[str, Any], kept: str, files: ModelFiles,
                   *reasons: str) -> None:
    """The sync failed naming the model and every one of ``reasons`` (the file among
    them), and the downstream still serves ``kept``."""
    assert not result["ok"] and result["version"] == kept, result
    message = str(result["error"])
    assert message.startswith("model m: "), message
    for reason in reasons:
        assert reason in message, message
    assert assert_published(env.down / "site", "m", files) == kept


def replace(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` as a new file: the upstream's object it was linked
    from stays as it was."""
    path.unlink()
    path.write_bytes(data)


# -- with the key --------------------------------------------------------------------------


def test_a_keyed_downstream_publishes_the_signed_upstream_version_checked_by_its_signature(
    env: Setup
) -> None:
    v1 = model()
    up_v1 = env.release(v1)
    sig = f"model.json{SIG}"
    assert env.pinned(up_v1, sig).is_file()
    assert not (env.up / "site" / "m" / sig).exists()  # never beside the entry point
    hits(env.site)

    result = keyed(env)
    assert result["ok"] and result["version"] == up_v1, result
    assert_same_version(env, v1, up_v1)
    cold = hits(env.site)
    # The signature beside the URL first (the contract's order), then the entry point
    # for its claim, the claimed version's signature, and the files it lists.
    assert [(h.uri, h.status) for h in cold[:3]] == [
        (f"/models/m/{sig}", 404), ("/models/m/model.json", 200), (env.uri(up_v1, sig), 200)]
    assert sorted((h.uri, h.status) for h in cold[3:]) == sorted(
        (env.uri(up_v1, p), 200) for p in ("model.json", *v1.shards))
    record = json.loads((env.down / "state" / "trust" / "m.json").read_bytes())
    assert record["version"] == 1 and record["model_version"] == up_v1

    # A warm check: the 404, the entry point, and the signature's 304: every file it
    # lists is held, so none is asked for.
    assert keyed(env)["version"] == up_v1
    entry = (env.up / "site" / "m" / "model.json").stat().st_size
    assert [(h.uri, h.status, h.body_bytes) for h in hits(env.site)][1:] == [
        ("/models/m/model.json", 200, entry), (env.uri(up_v1, sig), 304, 0)]


def test_an_update_costs_the_keyed_downstream_the_changed_shard_and_asks_for_no_other(
    env: Setup
) -> None:
    v1, v2 = model(), model(b"\x22")
    env.release(v1)
    assert keyed(env)["ok"]
    up_v2 = env.release(v2)
    hits(env.site)

    result = keyed(env)
    assert result["ok"] and result["changed"] and result["version"] == up_v2, result
    assert_same_version(env, v2, up_v2)
    update = hits(env.site)
    entry = (env.up / "site" / "m" / "model.json").stat().st_size
    sig = env.pinned(up_v2, f"model.json{SIG}").stat().st_size
    # The manifest is the same bytes as before and the unchanged shards are held by the
    # digests the signature lists: not one request for them, not even a 304.
    assert {h.uri: (h.status, h.body_bytes) for h in update if h.status != 404} == {
        "/models/m/model.json": (200, entry),
        env.uri(up_v2, f"model.json{SIG}"): (200, sig),
        env.uri(up_v2, "group1-shard2of3.bin"): (200, SHARD)}
    assert [h.uri for h in update if h.status == 404] == [f"/models/m/model.json{SIG}"]


# -- refused, the published version kept ---------------------------------------------------


@pytest.fixture
def published(env: Setup) -> tuple[str, ModelFiles]:
    """Release 1 through upstream and the keyed downstream; then release 2 (its second
    shard changed) published upstream: (release 2's upstream id, release 2)."""
    v1 = model()
    up_v1 = env.release(v1)
    assert keyed(env)["version"] == up_v1
    return env.release(model(b"\x22")), v1


def test_a_signature_changed_at_the_site_is_refused(
    env: Setup, published: tuple[str, ModelFiles]
) -> None:
    up_v2, v1 = published
    kept = assert_published(env.down / "site", "m", v1)
    path = env.pinned(up_v2, f"model.json{SIG}")
    doc = json.loads(path.read_bytes())
    doc["signed"]["files"]["group1-shard2of3.bin"]["sha256"] = "0" * 64
    replace(path, json.dumps(doc).encode())
    assert_refused(env, keyed(env), kept, v1, f"{env.site.url}{env.uri(up_v2, path.name)}",
                   "no valid signature by a trusted key")


def test_a_signature_by_a_key_the_downstream_does_not_trust_is_refused(
    env: Setup, tmp_path: Path
) -> None:
    v1 = model()
    up_v1 = env.release(v1)
    assert keyed(env)["version"] == up_v1
    other = tmp_path / "other.pem"
    env.up_keys.append(generate_key(other))  # upstream trusts it; the downstream does not
    up_v2 = env.release(model(b"\x22"), key=other)
    assert_refused(env, keyed(env), up_v1, v1,
                   f"{env.site.url}{env.uri(up_v2, 'model.json' + SIG)}",
                   "not signed by a trusted key")


def test_a_shard_changed_at_the_site_is_refused(
    env: Setup, published: tuple[str, ModelFiles]
) -> None:
    up_v2, v1 = published
    kept = assert_published(env.down / "site", "m", v1)
    replace(env.pinned(up_v2, "group1-shard2of3.bin"), b"\xee" * SHARD)  # same length
    assert_refused(env, keyed(env), kept, v1,
                   f"file {env.site.url}{env.uri(up_v2, 'group1-shard2of3.bin')}",
                   "SHA-256 differs")


def test_an_upstream_rolled_back_to_an_older_signature_is_refused(
    env: Setup, published: tuple[str, ModelFiles]
) -> None:
    """Upstream's operator rolls back to release 1 (signature version 1) after the
    downstream accepted release 2 (version 2): the downstream keeps release 2."""
    up_v2, v1 = published
    v2 = model(b"\x22")
    assert keyed(env)["version"] == up_v2
    done = run_cli("rollback", "-c", env.up / "shardsync.toml", "m")
    assert done.returncode == 0, done.stderr
    assert_refused(env, keyed(env), up_v2, v2, "model.json" + SIG,
                   "signature version 1 is lower than the last accepted, 2")


def test_an_upstream_version_without_its_signature_is_refused(
    env: Setup, published: tuple[str, ModelFiles]
) -> None:
    up_v2, v1 = published
    kept = assert_published(env.down / "site", "m", v1)
    path = env.pinned(up_v2, f"model.json{SIG}")
    path.unlink()
    hits(env.site)
    assert_refused(env, keyed(env), kept, v1, f"file {env.site.url}{env.uri(up_v2, path.name)}",
                   "no signature", f"that version has no .sig.json under versions/{up_v2}/")
    # Nothing unsigned was asked for: the two signatures' 404s and the entry point.
    assert [(h.uri, h.status) for h in hits(env.site)] == [
        (f"/models/m/{path.name}", 404), ("/models/m/model.json", 200),
        (env.uri(up_v2, path.name), 404)]


def test_an_entry_point_that_is_not_the_signed_manifest_rendered_is_refused(
    env: Setup, published: tuple[str, ModelFiles]
) -> None:
    """The entry point only says which signature to fetch: one that claims release 2
    but is not what the site renders from release 2's signed manifest (here the same
    JSON laid out otherwise) is not taken, however well the rest verifies."""
    up_v2, v1 = published
    kept = assert_published(env.down / "site", "m", v1)
    entry = env.up / "site" / "m" / "model.json"
    replace(entry, json.dumps(json.loads(entry.read_bytes())).encode())
    assert_refused(env, keyed(env), kept, v1, f"file {env.url}: the entry point is not the "
                   f"signed manifest of version {up_v2}")


# -- without the key -----------------------------------------------------------------------


def test_a_downstream_without_keys_carries_the_signature_and_publishes_the_same_version(
    env: Setup
) -> None:
    v1 = model()
    up_v1 = env.release(v1)
    hits(env.site)
    assert sync(env.down, env.url) == up_v1
    assert_same_version(env, v1, up_v1)
    assert not (env.down / "state" / "trust" / "m.json").exists()  # carried, not checked
    sig = f"model.json{SIG}"
    assert sorted((h.uri, h.status) for h in hits(env.site)) == sorted([
        ("/models/m/model.json", 200),
        *((env.uri(up_v1, p), 200) for p in ("model.json", sig, *v1.shards))])

    # A warm check is the entry point alone, a 304: the store holds the version it
    # pins, the carried signature included.
    assert sync(env.down, env.url) == up_v1
    assert sorted((h.uri, h.status) for h in hits(env.site)) == [("/models/m/model.json", 304)]

    # An update: the changed shard's body and the new signature's, 304s for the rest
    # (asked with the validators of their path in the version before).
    time.sleep(1.1)  # nginx's ETag is mtime in seconds and size (see test_upstream.py)
    v2 = model(b"\x22")
    up_v2 = env.release(v2)
    hits(env.site)
    assert sync(env.down, env.url) == up_v2
    assert_same_version(env, v2, up_v2)
    update = hits(env.site)
    entry = (env.up / "site" / "m" / "model.json").stat().st_size
    assert {h.uri: h.body_bytes for h in update if h.status == 200} == {
        "/models/m/model.json": entry,
        env.uri(up_v2, sig): env.pinned(up_v2, sig).stat().st_size,
        env.uri(up_v2, "model.json"): len(v2.manifest),
        env.uri(up_v2, "group1-shard2of3.bin"): SHARD}
    assert sorted(h.uri for h in update if h.status == 304) == [
        env.uri(up_v2, "group1-shard1of3.bin"), env.uri(up_v2, "group1-shard3of3.bin")]
