"""Shared helpers for the store tests: small TF.js-shaped models and an invariant checker.

The models are graph-model ``model.json`` files (or bare weights manifests) whose one
weight group is cut into shards, like converter output. :func:`versioned_model` makes
shards whose every 8-byte word names the version number and the shard index, so a
reader can tell which version any byte it read belongs to.

:func:`store_problems` checks a store from the raw files on disk, without using
``shardsync.store`` to read them, so a bug in the store cannot hide itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardsync.daemon.entrypoint import rewrite_paths
from shardsync.store import FileEntry, Store, Version

__all__ = [
    "ModelFiles",
    "assert_published",
    "assert_store_ok",
    "decode_shard",
    "make_model",
    "object_files",
    "object_path",
    "publish_model",
    "published_files",
    "random_model",
    "record_model",
    "run_script",
    "sha256",
    "store_at",
    "store_problems",
    "tfjs_model",
    "tmp_leftovers",
    "tree_snapshot",
    "versioned_model",
    "write_model",
]

#: The 8-byte word versioned shards repeat: (version number, shard index), little-endian.
_WORD = struct.Struct("<II")


@dataclass(frozen=True)
class ModelFiles:
    """A model as an origin serves it: the manifest bytes and every shard by relative path."""

    manifest_name: str
    manifest: bytes
    shards: dict[str, bytes]

    def entries(self) -> tuple[FileEntry, list[FileEntry]]:
        """FileEntry for the manifest and for every shard (digests computed here)."""
        man = FileEntry(self.manifest_name, sha256(self.manifest), len(self.manifest))
        return man, [FileEntry(p, sha256(b), len(b)) for p, b in self.shards.items()]

    @property
    def size(self) -> int:
        return len(self.manifest) + sum(len(b) for b in self.shards.values())


def store_at(state_dir: Path, site_dir: Path, **kwargs: Any) -> Store:
    """A Store on these directories publishing TF.js entry points, as the daemon opens it."""
    return Store(state_dir, site_dir, entry_point=rewrite_paths, **kwargs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Bytes per element of each dtype a test model may use (as TF.js counts them).
_ELEMENT = {"float32": 4, "int32": 4, "bool": 1, "uint8": 1, "uint16": 2, "float16": 2}

def tfjs_model(
    kind: str,
    groups: Sequence[Mapping[str, bytes]],
    *,
    quantization: str | None = None,
    manifest_name: str = "model.json",
    tag: Any = None,
) -> ModelFiles:
    """A manifest of ``kind`` ("graph-model", "layers-model", "weights-manifest") whose
    weight groups are ``groups`` (each: shard path -> bytes, in order).

    Each group holds one float32 weight filling its bytes, stored as ``quantization``
    ("uint8", "uint16", "float16") when given, so its element size is the quantized one.
    ``tag`` goes into the topology, so two models with equal shards have different
    manifests.
    """
    size = _ELEMENT[quantization or "float32"]
    raw_groups = []
    for i, shards in enumerate(groups):
        total = sum(len(b) for b in shards.values())
        assert total % size == 0, f"group {i + 1}: {total} bytes are not whole elements"
        weight: dict[str, Any] = {"name": f"layer{i}/kernel", "shape": [total // size],
                                  "dtype": "float32"}
        if quantization == "float16":
            weight["quantization"] = {"dtype": "float16"}
        elif quantization is not None:
            weight["quantization"] = {"dtype": quantization, "scale": 0.004, "min": -0.5}
        raw_groups.append({"paths": list(shards), "weights": [weight]})
    doc: Any
    if kind == "weights-manifest":
        doc = raw_groups
    elif kind == "graph-model":
        doc = {"format": "graph-model", "generatedBy": "tests", "convertedBy": None,
               "modelTopology": {"node": [{"name": "x", "op": "Placeholder"}], "tag": tag},
               "weightsManifest": raw_groups}
    elif kind == "layers-model":
        layers = [{"class_name": "Dense", "config": {"name": f"layer{i}", "units": 1}}
                  for i in range(len(groups))]
        doc = {"format": "layers-model", "generatedBy": "tests",
               "modelTopology": {"class_name": "Sequential",
                                 "config": {"name": str(tag), "layers": layers}},
               "weightsManifest": raw_groups}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    shards = {p: b for g in groups for p, b in g.items()}
    return ModelFiles(manifest_name, json.dumps(doc, indent=1).encode(), shards)


def make_model(
    shards: Mapping[str, bytes],
    *,
    manifest_name: str = "model.json",
    bare: bool = False,
    tag: Any = None,
) -> ModelFiles:
    """A TF.js manifest naming ``shards`` (in order) as one float32 weight group: a
    graph-model ``model.json``, or with ``bare`` a bare weights manifest (see
    :func:`tfjs_model`, which this is the common case of)."""
    return tfjs_model("weights-manifest" if bare else "graph-model", [shards],
                      manifest_name=manifest_name, tag=tag)


def versioned_model(
    number: int, *, shards: int = 3, words: int = 1024, subdir: str = "",
    manifest_name: str = "model.json",
) -> ModelFiles:
    """A model whose shards belong visibly to version ``number``.

    Shard ``i`` is the word (number, i) repeated; its length also depends on
    ``number``, so the manifest's sizes change between versions too.
    """
    prefix = f"{subdir}/" if subdir else ""
    files = {}
    for i in range(shards):
        n_words = words + 8 * ((number * 7 + i) % 13)
        files[f"{prefix}group1-shard{i + 1}of{shards}.bin"] = _WORD.pack(number, i) * n_words
    return make_model(files, manifest_name=manifest_name, tag={"version": number})


def decode_shard(data: bytes) -> set[tuple[int, int]]:
    """The distinct (version number, shard index) words of a versioned shard."""
    assert len(data) % _WORD.size == 0, f"shard of {len(data)} bytes is not whole words"
    return set(_WORD.iter_unpack(data))


def random_model(
    rng: random.Random, *, shards: int = 3, max_size: int = 64 * 1024, subdir: str = "",
    manifest_name: str = "model.json",
) -> ModelFiles:
    """A model of ``shards`` random shards of random sizes (multiples of 4)."""
    prefix = f"{subdir}/" if subdir else ""
    files = {
        f"{prefix}group1-shard{i + 1}of{shards}.bin":
            rng.randbytes(4 * rng.randint(1, max_size // 4))
        for i in range(shards)
    }
    return make_model(files, manifest_name=manifest_name, tag=rng.random())


def write_model(root: Path, model: ModelFiles) -> Path:
    """Write the model's files under ``root`` as an origin holds them; return the manifest path."""
    for rel, data in model.shards.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    root.mkdir(parents=True, exist_ok=True)
    (root / model.manifest_name).write_bytes(model.manifest)
    return root / model.manifest_name


def record_model(store: Store, name: str, model: ModelFiles) -> Version:
    """Put every file of ``model`` as an object and record (not publish) the version."""
    assert store.put_bytes(model.manifest) == sha256(model.manifest)
    for data in model.shards.values():
        assert store.put_bytes(data) == sha256(data)
    manifest, files = model.entries()
    return store.record(name, manifest, files)


def publish_model(
    store: Store, name: str, model: ModelFiles, *, now: float | None = None
) -> Version:
    """Put, record and publish ``model`` as the current version of ``name``."""
    version = record_model(store, name, model)
    store.publish(version, now=now)
    return version


def object_path(state_dir: Path, digest: str) -> Path:
    return state_dir / "objects" / "sha256" / digest[:2] / digest


def object_files(state_dir: Path) -> list[Path]:
    """Every file below ``objects/`` (whatever its name)."""
    root = state_dir / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """Every entry below ``root``: kind, mode and (for files and links) the content."""
    out: dict[str, tuple[str, int, bytes | None]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(root))] = ("link", 0, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[str(p.relative_to(root))] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[str(p.relative_to(root))] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def _groups(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    return doc["weightsManifest"]


# -- the published site: one checker, from the raw files ---------------------------------
#
# store_problems checks a store against its own records; published_files and
# assert_published read a site as a web server serves it and compare it with what the
# origin served. Both read the entry point the same way (_groups).


def store_problems(state_dir: Path, site_dir: Path) -> list[str]:
    """Everything wrong with a store, read from the raw files (empty list: all good).

    Checks: every object hashes to its name and is read-only; every model with a ref
    has an entry point that parses as a TF.js manifest naming only
    ``versions/<ref>/...`` paths, each a regular file with the size and digest that
    version's record gives, plus the manifest byte for byte in the version directory;
    ``site/<name>/`` holds nothing but that entry point and ``versions/`` (temporaries
    aside: :func:`tmp_leftovers` finds those); every
    partial sidecar claims at most the bytes its data file holds.
    """
    problems: list[str] = []
    for p in object_files(state_dir):
        data = p.read_bytes()
        if sha256(data) != p.name:
            problems.append(f"object {p.name} hashes to {sha256(data)}")
        if stat.S_IMODE(p.stat().st_mode) != 0o444:
            problems.append(f"object {p.name} has mode {oct(p.stat().st_mode)}")
        if p.parent.name != p.name[:2]:
            problems.append(f"object {p.name} in fanout {p.parent.name}")
    refs = state_dir / "refs"
    for ref in sorted(refs.iterdir()) if refs.exists() else []:
        if ref.name.startswith("."):
            continue
        name, vid = ref.name, ref.read_text().strip()
        try:
            record = json.loads((state_dir / "snapshots" / name / f"{vid}.json").read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: record of current version {vid} unreadable: {exc}")
            continue
        problems += _entry_problems(name, vid, record, site_dir / name)
    partial = state_dir / "partial"
    for side in sorted(partial.glob("*.json")) if partial.exists() else []:
        data = side.with_suffix(".data")
        try:
            meta = json.loads(side.read_bytes())
        except ValueError as exc:
            problems.append(f"partial sidecar {side.name} unreadable: {exc}")
            continue
        size = data.stat().st_size if data.exists() else 0
        if meta.get("durable", 0) > size:
            problems.append(f"partial {side.name} claims {meta['durable']} bytes, file has {size}")
    return problems


def _entry_problems(name: str, vid: str, record: dict[str, Any], model_dir: Path) -> list[str]:
    problems = []
    man = record["manifest"]
    entry_path = model_dir / man["path"]
    try:
        entry = json.loads(entry_path.read_bytes())
        groups = _groups(entry)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{name}: entry point {entry_path} unusable: {exc}"]
    others = sorted(e for e in os.listdir(model_dir)
                    if e not in (man["path"], "versions") and not e.startswith(".tmp-"))
    if others:
        problems.append(f"{name}: {model_dir} holds {others} besides the entry point")
    by_path = {f["path"]: f for f in record["files"]}
    vdir = model_dir / "versions" / vid
    named = set()
    for group in groups:
        for p in group["paths"]:
            prefix = f"versions/{vid}/"
            if not p.startswith(prefix):
                problems.append(f"{name}: entry point names {p}, not under {prefix}")
                continue
            rel = p[len(prefix):]
            named.add(rel)
            if rel not in by_path:
                problems.append(f"{name}: entry point names {rel}, not in record {vid}")
                continue
            problems += _file_problems(name, model_dir / p, by_path[rel])
    if named != set(by_path):
        problems.append(f"{name}: entry point names {sorted(named)}, record has {sorted(by_path)}")
    problems += _file_problems(name, vdir / man["path"], man)
    return problems


def _file_problems(name: str, path: Path, want: Mapping[str, Any]) -> list[str]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return [f"{name}: {path} is missing"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{name}: {path} is not a regular file"]
    data = path.read_bytes()
    if len(data) != want["size"] or sha256(data) != want["digest"]:
        return [f"{name}: {path} has {len(data)} bytes {sha256(data)}, "
                f"record says {want['size']} {want['digest']}"]
    return []


def published_files(site: Path, name: str) -> tuple[str, dict[str, bytes], bytes]:
    """Read ``site/name`` as a web server would serve it: (version, shard path -> bytes,
    the version's manifest), following the entry point's paths.

    Asserts that every path of the entry point points into one ``versions/<v>/``.
    """
    entry_path = site / name
    entries = [p for p in entry_path.iterdir() if p.is_file()]
    assert len(entries) == 1, f"{name}: expected one entry point, found {entries}"
    doc = json.loads(entries[0].read_bytes())
    groups = _groups(doc)
    versions = set()
    files: dict[str, bytes] = {}
    for g in groups:
        for p in g["paths"]:
            head, v, rel = p.split("/", 2)
            assert head == "versions", f"{name}: entry point path {p!r} is not under versions/"
            versions.add(v)
            files[rel] = (entry_path / p).read_bytes()
    assert len(versions) == 1, f"{name}: entry point names several versions {versions}"
    (version,) = versions
    manifest = (entry_path / "versions" / version / entries[0].name).read_bytes()
    return version, files, manifest


def assert_published(site: Path, name: str, model: ModelFiles) -> str:
    """Assert that ``site/name`` serves exactly ``model`` (bytes of every file, the origin's
    manifest byte for byte in the version directory); return the version."""
    version, files, manifest = published_files(site, name)
    assert (site / name / model.manifest_name).is_file()
    assert manifest == model.manifest, f"{name}: version {version} has another manifest"
    assert set(files) == set(model.shards), f"{name}: {sorted(files)} != {sorted(model.shards)}"
    for rel, data in model.shards.items():
        assert sha256(files[rel]) == sha256(data), f"{name}: {rel} differs from the origin's"
    return version


def tmp_leftovers(*roots: Path) -> list[str]:
    """Every ``.tmp-*`` name below ``roots`` (what a killed writer leaves behind)."""
    return sorted(str(p) for root in roots for p in root.rglob(".tmp-*"))


def assert_store_ok(state_dir: Path, site_dir: Path) -> None:
    problems = store_problems(state_dir, site_dir)
    assert not problems, "\n".join(problems)


def run_script(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the venv's) and return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
    )


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mnt`` (made here); unmounted afterwards."""
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def flip_byte(path: Path, offset: int, mask: int = 0x80) -> None:
    """Corrupt one byte of a (read-only) file in place, behind the store's back."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))
    os.chmod(path, 0o444)
