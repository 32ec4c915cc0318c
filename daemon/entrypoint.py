"""The entry point the store publishes: a TF.js manifest with only its weight paths rewritten.

The store knows no model format. It is given :func:`rewrite_paths` as
``Store(entry_point=rewrite_paths)`` (daemon/oneshot.py, daemon/service.py) and renders
each published version's entry point with it: every group's ``paths`` prefixed with the
version's directory, nothing else changed. :func:`manifest_groups` (where a manifest's
weight groups are) and :func:`shard_relpath` (which file a manifest path names) are what
that rewrite is built on; :mod:`.tfjs` parses manifests with them too. Kept apart from
:mod:`.tfjs` because this is what the store runs, pure and small, while the rest of
the format (dtypes, sizes, shard URLs, byte checks) is the daemon's alone.
"""

from __future__ import annotations

import json
from typing import Any

from shardsync.store import IntegrityError, UnsafePathError, check_relpath

from .jsonscan import JSONScanError, Scan, Span, scan

__all__ = ["MAX_GROUP_VALUES", "groups_span", "load_groups", "manifest_groups", "rewrite_paths",
           "scan_manifest", "shard_relpath"]

#: Most JSON values (objects, arrays, strings, numbers...) the weight groups may hold.
#: They are the one part of a manifest built as Python objects, at up to ~70 bytes per
#: value (``{}`` is 3 bytes of text): 250,000 bound that to ~18 MiB whatever the bytes.
#: A weight is ~8 values (its object, name, shape list and dims, dtype), so this allows
#: ~30,000 weights; real TF.js models have hundreds to a few thousand.
MAX_GROUP_VALUES = 250_000


# TF.js's own `model.save('downloads://x')` writes `paths: ['./x.weights.bin']`; the
# browser resolves `./` away, so a leading `./` names the same file as without it.
_DOT_PREFIX = "./"

# Characters that do not survive being pasted into a URL path the way TF.js does it
# (prefix + path + query): `?` and `#` would start a query or fragment, and `%` would
# be decoded by the web server into another name than the one written on disk.
_URL_SPECIAL = "?#%"


def manifest_groups(doc: Any) -> list[Any] | None:
    """Return the list of weight groups of a parsed manifest, or None if it has none.

    ``doc`` is the decoded JSON: a list (a bare weights manifest, returned itself) or
    an object whose ``weightsManifest`` is a list (a model.json, that list returned).
    The list returned is the one inside ``doc``, so changing its groups changes
    ``doc``. The groups themselves are not checked here (see
    ``shardsync.daemon.tfjs.parse_manifest``); anything else gives None.
    """
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        groups = doc.get("weightsManifest")
        if isinstance(groups, list):
            return groups
    return None


def scan_manifest(data: bytes) -> Scan:
    """Check that ``data`` is JSON and find a manifest's members, building none of them.

    Keeps ``weightsManifest``, ``format`` and ``modelTopology`` (probed for ``node``,
    which tells a graph model). The topology, the bulk of a big model.json, is checked
    but never built (docs/performance.md, "Parsing manifests": a 43 MiB one cost 1.4 GB
    as Python objects). Raises :class:`~.jsonscan.JSONScanError` for invalid JSON.
    """
    return scan(data, keep=("weightsManifest", "format", "modelTopology"),
                probe={"modelTopology": ("node",)})


def groups_span(data: bytes, found: Scan) -> Span | None:
    """Where the weight groups of the scanned manifest ``data`` lie, or None if nowhere.

    The byte-level twin of :func:`manifest_groups`: the whole document when it is a list
    (a bare weights manifest), else its ``weightsManifest`` member (which may be any
    JSON value; the caller checks that it is a list).
    """
    if data[found.root.start:found.root.start + 1] == b"[":
        return found.root
    return found.members.get("weightsManifest")


def load_groups(data: bytes, span: Span) -> Any:
    """``json.loads`` of the weight groups at ``span`` of ``data``, bounded in memory.

    Counted first without building anything: every value but a container's first
    follows a comma, and every container opens with a bracket, so commas plus brackets
    bound the values (commas and brackets inside strings only make it count more).
    Raises ValueError past :data:`MAX_GROUP_VALUES`.
    """
    values = sum(data.count(c, span.start, span.end) for c in (b",", b"{", b"[")) + 1
    if values > MAX_GROUP_VALUES:
        raise ValueError(f"the weight groups hold about {values} JSON values, more than the "
                         f"{MAX_GROUP_VALUES} a TF.js model needs")
    return json.loads(memoryview(data)[span.start:span.end].tobytes())


def shard_relpath(path: str) -> str:
    """Return the relative file path that the manifest path ``path`` names.

    A leading ``./`` (as TF.js's browser save writes it) is dropped; the rest must be
    a safe relative path (:func:`shardsync.store.check_relpath`) without
    ``?``, ``#`` or ``%``. Raises UnsafePathError (``file`` names the path) otherwise.
    """
    if not isinstance(path, str):
        raise UnsafePathError(f"shard path {path!r} is not a string", file=repr(path))
    rel = path
    while rel.startswith(_DOT_PREFIX):
        rel = rel[len(_DOT_PREFIX):]
    bad = [c for c in _URL_SPECIAL if c in rel]
    if bad:
        raise UnsafePathError(
            f"unsafe path {path!r}: {bad[0]!r} does not survive in a shard URL", file=repr(path)
        )
    try:
        return check_relpath(rel)
    except UnsafePathError as exc:
        if rel == path:
            raise
        raise UnsafePathError(f"unsafe path {path!r}: {exc.reason}", file=repr(path)) from exc


def rewrite_paths(data: bytes, prefix: str) -> bytes:
    """Return the manifest ``data`` with every group's ``paths`` entries prefixed.

    Each path becomes ``prefix + shard_relpath(path)`` (e.g. ``versions/3f2a/`` +
    ``group1-shard1of2.bin``); everything else (keys, their order, values) is kept,
    the bytes outside the weight groups are copied as they are (a big topology is never
    built: :func:`scan_manifest`). ``prefix`` must be empty or a safe relative directory
    ending in ``/``. Raises UnsafePathError for an unsafe prefix or path, and
    IntegrityError if ``data`` is not a TF.js manifest (the daemon parses every
    manifest before the store sees it, so that means the stored bytes are wrong).
    Pure: reads and writes nothing.
    """
    if prefix:
        if not prefix.endswith("/"):
            raise UnsafePathError(f"path prefix {prefix!r} must end with '/'", file=repr(prefix))
        check_relpath(prefix[:-1])
    try:
        found = scan_manifest(data)
    except JSONScanError as exc:
        raise IntegrityError(f"manifest is not valid JSON: {exc}") from exc
    span = groups_span(data, found)
    view = memoryview(data)
    try:
        groups = None if span is None else load_groups(data, span)
    except ValueError as exc:
        raise IntegrityError(f"not a TF.js manifest: {exc}") from None
    if not isinstance(groups, list):
        raise IntegrityError("not a TF.js manifest: no list of weight groups")
    for i, group in enumerate(groups):
        paths = group.get("paths") if isinstance(group, dict) else None
        if not isinstance(paths, list):
            raise IntegrityError(f"weight group {i + 1} has no list of paths")
        group["paths"] = [prefix + shard_relpath(p) for p in paths]
    assert span is not None
    new = json.dumps(groups, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"".join([view[:span.start], new, view[span.end:]])
