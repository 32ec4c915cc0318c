"""Signed models: Ed25519 keys, the ``<manifest>.sig.json`` file, and checking one.

The contract is docs/design.md, "Signed models". A publisher runs ``shardsync keygen``
once and ``shardsync sign`` for each release (:func:`generate_key`,
:func:`sign_manifest`); the daemon, for a model with trusted keys
(:func:`trusted_keys`), fetches the signature before anything else and lets the
model through only if :func:`verify_signature` accepts it and its version is not
below the last accepted one (:func:`check_rollback`, against the store's trust
record, :func:`trust_record`). What the sync then holds the files to (length and
SHA-256 of each) is the :class:`Signed` it returns.

What is signed is :func:`canonical` of the ``signed`` object: sorted keys, no
whitespace, UTF-8, as docs/design.md gives it, so any JSON writer's layout of the file
verifies. The key id is the hex SHA-256 of the raw 32-byte public key.

``cryptography`` is imported inside the functions that need it: it costs ~90 ms of
start-up (``python -X importtime``), which a one-shot ``shardsync sync`` of unsigned
models, or ``status``, must not pay (docs/performance.md, "Start-up").
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import os
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardsync.store import TMP_PREFIX, ShardsyncError, StorageError, write_atomic

from .entrypoint import manifest_groups, shard_relpath
from .errors import ManifestError, SignatureError

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = [
    "KEY_PREFIX",
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_SUFFIX",
    "Listed",
    "Signed",
    "canonical",
    "check_rollback",
    "format_public_key",
    "generate_key",
    "key_id",
    "parse_public_key",
    "sign_manifest",
    "signature_status",
    "trust_record",
    "trusted_keys",
    "verify_signature",
]

#: The signature of ``model.json`` is ``model.json.sig.json`` beside it (docs/design.md).
SIGNATURE_SUFFIX = ".sig.json"
SIGNATURE_TYPE = "shardsync-signature"
SPEC = 1
#: How a public key is written in a config and by ``keygen``.
KEY_PREFIX = "ed25519:"

#: Most bytes a signature file may have; reading stops there. A model at
#: max_model_bytes (8 GiB) in the converter's 4 MiB shards lists 2048 files at ~130
#: bytes each, ~270 KB: 1 MiB leaves room for smaller shards and long names while
#: bounding what a hostile origin can make us read before anything is verified.
MAX_SIGNATURE_BYTES = 1 << 20

#: ``expires`` as docs/design.md writes it: UTC, to the second.
_EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_RAW_KEY_BYTES = 32  # an Ed25519 public key
_HASH_CHUNK = 1 << 20  # hashing a shard: big reads, bounded memory


@dataclass(frozen=True)
class Listed:
    """One file as the signature lists it."""

    length: int
    sha256: str


@dataclass(frozen=True)
class Signed:
    """A signature that verified: its ``signed`` fields, and which trusted key signed."""

    version: int
    expires: float  # Unix time
    files: Mapping[str, Listed]
    keyid: str

    @property
    def expires_text(self) -> str:
        return format_expires(self.expires)


# -- keys ---------------------------------------------------------------------------


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of ``ed25519:<base64>``; ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        raise ValueError(f"{text!r} is not a public key like \"{KEY_PREFIX}BASE64\" "
                         "(what `shardsync keygen` prints)")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r}: the key is not valid base64") from None
    if len(raw) != _RAW_KEY_BYTES:
        raise ValueError(f"{text!r}: an Ed25519 public key is {_RAW_KEY_BYTES} bytes, "
                         f"not {len(raw)}")
    return raw


def format_public_key(raw: bytes) -> str:
    return KEY_PREFIX + base64.b64encode(raw).decode()


def key_id(raw: bytes) -> str:
    """The key id a signature names its key by: hex SHA-256 of the raw public key."""
    return hashlib.sha256(raw).hexdigest()


def trusted_keys(model: ModelConfig) -> frozenset[bytes]:
    """The raw public keys whose signature lets ``model`` through; empty: unsigned.

    The model's ``public_keys``, which the config has already joined with its
    ``[[origin]]``'s (docs/design.md: "per model, in addition to its origin's").
    """
    return frozenset(model.public_keys)


def generate_key(path: Path) -> str:
    """Write a new Ed25519 private key to ``path`` (PEM, PKCS#8, mode 0600); return its
    public key as ``ed25519:<base64>``.

    Never replaces a file: the key is written durably under a temporary name in the
    same directory (temp, fsync, rename, fsync dir), then hardlinked to ``path``, which
    fails if anything is there. A crash leaves no key or the whole key at ``path``
    (and perhaps a ``.tmp-`` file).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    path = Path(path)
    tmp = f"{TMP_PREFIX}key-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot open the key's directory",
                                        file=str(path.parent)) from exc
    try:
        write_atomic(dir_fd, tmp, pem, mode=0o600)
        try:
            os.link(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.unlink(tmp, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except FileExistsError:
        raise ShardsyncError("already exists; refusing to overwrite it (a lost private key "
                             "cannot be recovered)", file=str(path)) from None
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot write the key", file=str(path)) from exc
    finally:
        os.close(dir_fd)
    return format_public_key(raw)


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot read the key", file=str(path)) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ShardsyncError(f"not an unencrypted PEM private key: {exc}",
                             file=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ShardsyncError(f"not an Ed25519 key but {type(key).__name__}", file=str(path))
    return key


# -- the signed document ----------------------------------------------------------------


def canonical(signed: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers (docs/design.md): sorted keys, no spaces, UTF-8."""
    return json.dumps(signed, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def format_expires(t: float) -> str:
    return time.strftime(_EXPIRES_FORMAT, time.gmtime(int(t)))


def _parse_expires(text: Any) -> float:
    if not isinstance(text, str):
        raise ValueError(f"expires {text!r} is not a time like \"2027-03-01T00:00:00Z\"")
    try:
        return float(calendar.timegm(time.strptime(text, _EXPIRES_FORMAT)))
    except ValueError:
        raise ValueError(f"expires {text!r} is not a time like \"2027-03-01T00:00:00Z\"") from None


def sign_manifest(
    key_path: Path, manifest_path: Path, *, expires_in: float, version: int | None = None,
    now: float | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Sign the model whose manifest is ``manifest_path`` (its shards beside it) with the
    private key at ``key_path``; write ``<manifest>.sig.json`` and return (its path, the
    document).

    ``files`` lists the manifest and every shard path of its ``weightsManifest`` (as the
    daemon names them: a leading ``./`` dropped) with length and SHA-256. ``version``
    defaults to the previous signature file's + 1 (1 without one); a previous file that
    cannot be read is an error rather than a silent 1, which every daemon that accepted a
    higher version would refuse. Written atomically (temp, fsync, rename, fsync dir).
    """
    key = _load_private_key(key_path)
    manifest_path = Path(manifest_path)
    directory = manifest_path.parent
    sig_path = manifest_path.with_name(manifest_path.name + SIGNATURE_SUFFIX)
    now = time.time() if now is None else now
    if version is None:
        version = _previous_version(sig_path) + 1
    if version < 1:
        raise ShardsyncError(f"version must be at least 1, not {version}", file=str(sig_path))
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot read the manifest",
                                        file=str(manifest_path)) from exc
    try:
        groups = manifest_groups(json.loads(data))
    except ValueError as exc:
        raise ManifestError(f"is not JSON: {exc}", file=str(manifest_path)) from None
    if not groups:
        raise ManifestError("has no weightsManifest (no weight groups)", file=str(manifest_path))
    files = {manifest_path.name: {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    for group in groups:
        paths = group.get("paths") if isinstance(group, dict) else None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ManifestError("a weight group has no list of paths", file=str(manifest_path))
        for p in paths:
            rel = shard_relpath(p)
            files[rel] = _listing(directory / rel)
    signed = {"type": SIGNATURE_TYPE, "spec": SPEC, "version": version,
              "expires": format_expires(now + expires_in), "files": files}
    sig = key.sign(canonical(signed))
    raw = key.public_key().public_bytes_raw()
    doc = {"signed": signed,
           "signatures": [{"keyid": key_id(raw), "sig": base64.b64encode(sig).decode()}]}
    body = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            write_atomic(dir_fd, sig_path.name, body)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot write the signature",
                                        file=str(sig_path)) from exc
    return sig_path, doc


def _previous_version(sig_path: Path) -> int:
    try:
        raw = sig_path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot read the previous signature",
                                        file=str(sig_path)) from exc
    try:
        v = json.loads(raw)["signed"]["version"]
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
    except (ValueError, KeyError, TypeError):
        pass
    raise ShardsyncError("the previous signature has no readable version; give --version N",
                         file=str(sig_path))


def _listing(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    length = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_CHUNK):
                h.update(block)
                length += len(block)
    except FileNotFoundError:
        raise ShardsyncError("listed in the manifest but missing", file=str(path)) from None
    except OSError as exc:
        raise StorageError.from_oserror(exc, "cannot read the shard", file=str(path)) from exc
    return {"length": length, "sha256": h.hexdigest()}


# -- checking --------------------------------------------------------------------------


def verify_signature(
    data: bytes, trusted: Collection[bytes], *, now: float, file: str | None = None
) -> Signed:
    """Check the signature file ``data`` against the ``trusted`` raw public keys at time
    ``now``; return what it signs, or raise SignatureError (naming ``file``) with the
    reason: not a signature document, no signature by a trusted key, none of those
    valid (the bytes were changed, or signed by another key of the same id), malformed
    ``signed`` fields, expired. Nothing in ``signed`` is believed before a signature
    over it verified.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def refuse(reason: str) -> SignatureError:
        return SignatureError(reason, file=file)

    try:
        doc = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(f"the signature is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict) \
            or not isinstance(doc.get("signatures"), list):
        raise refuse("the signature file has no \"signed\" object and \"signatures\" list")
    signed: dict[str, Any] = doc["signed"]
    payload = canonical(signed)
    by_id = {key_id(k): k for k in trusted}
    offered: list[str] = []
    invalid: list[str] = []
    accepted: str | None = None
    for entry in doc["signatures"]:
        kid = entry.get("keyid") if isinstance(entry, dict) else None
        sig = entry.get("sig") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not isinstance(sig, str):
            continue
        offered.append(kid)
        key = by_id.get(kid)
        if key is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(
                base64.b64decode(sig, validate=True), payload)
        except (InvalidSignature, binascii.Error, ValueError):
            invalid.append(kid)
            continue
        accepted = kid
        break
    if accepted is None:
        if invalid:
            raise refuse("no valid signature by a trusted key: the signature by key "
                         f"{_short(invalid[0])} does not match the signed files "
                         "(changed after signing?)")
        names = ", ".join(_short(k) for k in offered) or "none"
        trusted_names = ", ".join(sorted(_short(k) for k in by_id))
        raise refuse(f"not signed by a trusted key (signed by key ids {names}; "
                     f"trusted: {trusted_names})")
    try:
        result = _fields(signed, accepted)
    except ValueError as exc:
        raise refuse(f"the signed document is malformed: {exc}") from None
    if now >= result.expires:
        raise refuse(f"the signature expired at {result.expires_text} (version "
                     f"{result.version}); the publisher must sign the model again")
    return result


def _fields(signed: Mapping[str, Any], keyid: str) -> Signed:
    if signed.get("type") != SIGNATURE_TYPE:
        raise ValueError(f"type is {signed.get('type')!r}, not {SIGNATURE_TYPE!r}")
    if signed.get("spec") != SPEC:
        raise ValueError(f"spec {signed.get('spec')!r} is not {SPEC}")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version {version!r} is not an integer of at least 1")
    expires = _parse_expires(signed.get("expires"))
    raw_files = signed.get("files")
    if not isinstance(raw_files, dict):
        raise ValueError("files is not an object")
    files: dict[str, Listed] = {}
    for path, item in raw_files.items():
        length = item.get("length") if isinstance(item, dict) else None
        digest = item.get("sha256") if isinstance(item, dict) else None
        if not isinstance(length, int) or isinstance(length, bool) or length < 0 \
                or not isinstance(digest, str) or len(digest) != 64 \
                or digest.strip("0123456789abcdef"):
            raise ValueError(f"files[{path!r}] needs a length and a lowercase hex sha256")
        files[path] = Listed(length, digest)
    return Signed(version, expires, files, keyid)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(keyid: str) -> str:
    """A key id as messages show it: 16 hex digits are enough to tell keys apart."""
    return keyid[:16]


def check_rollback(signed: Signed, record: Mapping[str, Any] | None, *,
                   file: str | None = None) -> None:
    """SignatureError if ``signed`` is older than the last accepted signature (``record``,
    the store's trust record): an origin or cache serving an old release, however well
    signed, must not take a device back to it."""
    last = record.get("version") if record else None
    if isinstance(last, int) and signed.version < last:
        raise SignatureError(
            f"signature version {signed.version} is lower than the last accepted, {last} "
            "(rollback refused; if the publisher really started again, remove the "
            "model's trust record in state_dir/trust/)", file=file)


def trust_record(signed: Signed, *, model_version: str, signature_digest: str
                 ) -> dict[str, Any]:
    """The trust record after accepting ``signed`` for the version ``model_version``:
    its ``version`` is what :func:`check_rollback` holds later signatures to (never
    lower, since a lower one is refused before this); the rest is for status."""
    return {"version": signed.version, "keyid": signed.keyid, "expires": signed.expires_text,
            "model_version": model_version, "signature_sha256": signature_digest}


def signature_status(record: Mapping[str, Any] | None, current: str | None) -> dict[str, Any]:
    """What ``/v1/status`` says of a model's signature: signed (the current version was
    accepted with a signature), by which key id, its version and expiry."""
    if not record or current is None or record.get("model_version") != current:
        return {"signed": False, "keyid": None, "version": None, "expires": None}
    return {"signed": True, "keyid": record.get("keyid"), "version": record.get("version"),
            "expires": record.get("expires")}
