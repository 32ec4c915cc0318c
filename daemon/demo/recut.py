"""Re-cutting a TF.js model's weight groups into shards of another size.

:func:`recut` rewrites a model on disk as tensorflowjs_converter would have cut it:
``groupN-shardKofM.bin`` shards of one size, the bytes of each group unchanged, the
manifest's ``paths`` rewritten. :func:`write_cut` is the streaming writer it is built
on, which :func:`.samples.make_big_model` also writes its shards with. Kept apart from
:mod:`.samples`, which writes the sample models, because this works on any model:
the demo also re-cuts a packaged sample with it (daemon/demo/run.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..entrypoint import manifest_groups, shard_relpath

__all__ = ["CHUNK", "recut", "write_cut"]

#: Copy and generation buffer: big enough to be fast, small enough to never matter.
CHUNK = 1 << 20


def _read_concatenated(base: Path, paths: list[str]) -> Iterator[bytes]:
    for p in paths:
        with open(base / p, "rb") as f:
            while block := f.read(CHUNK):
                yield block


def write_cut(stream: Iterator[bytes], base: Path, names: list[str], shard_size: int,
               prefix: str = "") -> None:
    """Write ``stream`` into files ``base/prefix+name``, ``shard_size`` bytes each (the
    last takes the rest)."""
    pending = memoryview(b"")
    for k, name in enumerate(names):
        last = k == len(names) - 1
        with open(base / (prefix + name), "wb") as out:
            written = 0
            while last or written < shard_size:
                if not pending:
                    pending = memoryview(next(stream, b""))
                    if not pending:
                        break
                take = len(pending) if last else min(len(pending), shard_size - written)
                out.write(pending[:take])
                pending = pending[take:]
                written += take


def recut(manifest_dir: str | os.PathLike[str], manifest_name: str,
          shard_size: int) -> list[str]:
    """Re-cut every group of a model into ``groupN-shardKofM.bin`` shards of ``shard_size``.

    As tensorflowjs_converter names them (N the group's 1-based position, M its shard
    count; the last shard takes the rest; an empty group gets one empty shard). The
    concatenation of a group's new shards is the concatenation of its old ones. The
    manifest's ``paths`` are rewritten (everything else kept) and the old shard files
    removed. Returns the new paths, in manifest order. Works through temporary files
    streamed 1 MiB at a time; a crash leaves the old model, or old and new files.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, not {shard_size}")
    base = Path(manifest_dir)
    doc = json.loads((base / manifest_name).read_bytes())
    groups = manifest_groups(doc)
    if groups is None:
        raise ValueError(f"{base / manifest_name} is not a TF.js manifest")
    old: list[str] = []
    new: list[str] = []
    tmp = ".recut-"
    for gi, group in enumerate(groups, 1):
        paths = [shard_relpath(p) for p in group["paths"]]
        total = sum((base / p).stat().st_size for p in paths)
        count = max(1, -(-total // shard_size))
        names = [f"group{gi}-shard{k}of{count}.bin" for k in range(1, count + 1)]
        write_cut(_read_concatenated(base, paths), base, names, shard_size, tmp)
        old += paths
        new += names
        group["paths"] = names
    for p in old:
        (base / p).unlink(missing_ok=True)
    for name in new:
        os.replace(base / (tmp + name), base / name)
    (base / manifest_name).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return new
