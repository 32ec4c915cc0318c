"""Understanding TF.js manifests: which files a model is made of, and how big they must be.

shardsync mirrors three layouts (docs/design.md, "The TF.js formats it must understand"):
graph-model and layers-model ``model.json`` files, and face-api's bare weights
manifests. :func:`parse_manifest` refuses anything it cannot mirror safely and
returns a :class:`Manifest`: the shard paths, grouped, with the number of bytes each
group's shards must add up to. TF.js itself never checks that (a short shard or a
404 page loads as garbage weights), so the fetcher checks every group with
:mod:`.groupcheck` before a version is published.

:func:`shard_url` builds a shard's URL exactly as TF.js does, so that shardsync
fetches what a browser would fetch. The entry-point rewrite the store is given
(``Store(entry_point=rewrite_paths)``) and the two manifest helpers it is built on
(:func:`~.entrypoint.scan_manifest`, :func:`~.entrypoint.shard_relpath`) live in
:mod:`.entrypoint`; this module parses and checks the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from shardsync.store import UnsafePathError, check_manifest_name

from .entrypoint import groups_span, load_groups, scan_manifest, shard_relpath
from .errors import ManifestError
from .jsonscan import JSONScanError, NestingError, Scan
from .signing import SIGNATURE_SUFFIX

__all__ = [
    "DEFAULT_MAX_TOTAL",
    "DTYPE_SIZES",
    "QUANTIZED_SIZES",
    "STRING_DTYPE",
    "Group",
    "Manifest",
    "Weight",
    "manifest_filename",
    "parse_manifest",
    "shard_url",
    "signature_url",
]


#: Cap on one model's total weight bytes: above what a browser can load at all (TF.js
#: notes Chrome's ~2 GB ArrayBuffer limit), low enough that a hostile shape cannot make
#: us fill a disk.
DEFAULT_MAX_TOTAL = 8 << 30

#: Bytes per element of each plain dtype, as tfjs-core's DTYPE_VALUE_SIZE_MAP.
DTYPE_SIZES: dict[str, int] = {"float32": 4, "int32": 4, "bool": 1, "complex64": 8}

#: Bytes per element of each quantized dtype; with ``quantization`` these count instead.
QUANTIZED_SIZES: dict[str, int] = {"uint8": 1, "uint16": 2, "float16": 2}

#: The variable-size dtype: per element, a little-endian uint32 length + that many bytes.
STRING_DTYPE = "string"

# The length prefix of one string element: a uint32 (tfjs-core NUM_BYTES_STRING_LENGTH).
_STRING_PREFIX = 4

# Which plain dtypes TF.js can dequantize into from each quantized dtype (decodeWeight
# in tfjs-core io_utils.ts throws for any other pair).
_QUANTIZABLE = {"uint8": ("float32", "int32"), "uint16": ("float32", "int32"),
                "float16": ("float32",)}

_KINDS = ("graph-model", "layers-model")



@dataclass(frozen=True)
class Weight:
    """One weight of a group: ``quantization`` is the quantized dtype, or None."""

    name: str
    shape: list[int]
    dtype: str
    quantization: str | None = None

    @property
    def count(self) -> int:
        """Number of elements (1 for a scalar, whose shape is ``[]``)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Bytes this weight takes in the shards; None for a string weight."""
        if self.quantization is not None:
            return self.count * QUANTIZED_SIZES[self.quantization]
        if self.dtype == STRING_DTYPE:
            return None
        return self.count * DTYPE_SIZES[self.dtype]

    @property
    def min_nbytes(self) -> int:
        """The least bytes this weight can take (a string element is at least its prefix)."""
        n = self.nbytes
        return self.count * _STRING_PREFIX if n is None else n


@dataclass(frozen=True)
class Group:
    """One weight group: its shards (in order) hold its weights' bytes, concatenated.

    ``paths`` are relative file paths as :func:`shard_relpath`
    gives them. ``expected_size`` is the exact total of the shards, or None when a
    string weight makes it known only by walking the data. ``index`` is the group's
    position in the manifest (0-based); messages call it "weight group index+1".
    """

    paths: list[str]
    weights: list[Weight]
    expected_size: int | None
    index: int = 0

    @property
    def min_size(self) -> int:
        """The least bytes the shards can hold (``expected_size`` when it is known)."""
        return sum(w.min_nbytes for w in self.weights)

    @property
    def label(self) -> str:
        """The group's shards in a few words, for messages and ``file=``."""
        if len(self.paths) <= 3:
            return ", ".join(self.paths) or "(no files)"
        return f"{self.paths[0]} .. {self.paths[-1]} ({len(self.paths)} files)"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: ``kind`` is "graph-model", "layers-model" or "weights-manifest".

    ``filename`` is the manifest's own file name (the last segment of its URL's path,
    percent-decoded, without the query). ``groups`` are in manifest order.
    """

    kind: str
    filename: str
    groups: list[Group]

    @property
    def files(self) -> list[str]:
        """Every shard path, group by group, in manifest order."""
        return [p for g in self.groups for p in g.paths]

    @property
    def expected_size(self) -> int | None:
        """Total bytes of all shards, or None if a group holds a string weight."""
        sizes = [g.expected_size for g in self.groups]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]


def manifest_filename(manifest_url: str) -> str:
    """Return the manifest's file name: the last path segment of its URL, decoded.

    Raises ManifestError if the URL is not http(s) with a host, or its path names no
    file (ends with ``/``), or the name is unsafe or reserved (``versions``).
    """
    head = _split_url(manifest_url)[0]
    name = unquote(head[head.rfind("/") + 1:])
    if not name:
        raise ManifestError(f"manifest URL {manifest_url!r} names no file (it ends with '/')")
    try:
        check_manifest_name(shard_relpath(name))
    except UnsafePathError as exc:
        raise ManifestError(f"manifest URL {manifest_url!r}: {exc.reason}") from exc
    return name


def shard_url(manifest_url: str, path: str) -> str:
    """Return the URL of the shard ``path`` of the manifest at ``manifest_url``.

    Built as TF.js builds it: the manifest URL up to and including the last ``/`` of
    its path, plus ``path``, plus the manifest URL's query string (TF Hub serves
    ``model.json?tfjs-format=file`` and its shards as ``group1-shard1of1.bin?tfjs-format=file``).

    What tfjs-core does (io/http.ts, ``HTTPRequest.getWeightUrls`` and ``parseUrl``):
    ``prefix = url.substring(0, url.lastIndexOf('/')) + '/'``, ``suffix`` is
    ``url.substring(url.lastIndexOf('?'))`` when that ``?`` comes after the last ``/``
    (else ``''``), and every shard URL is ``prefix + path + suffix``; no encoding, no
    URL resolution. (``tf.io.loadWeights``, which face-api uses for bare weights
    manifests, joins ``base + '/' + path`` without a query; its callers never have
    one, so the same rule covers it.) We cut at the ``?`` that starts the query and at
    the last ``/`` before it, which is the same URL for every ordinary manifest URL;
    we differ only where TF.js builds a broken one: a ``/`` or a second ``?`` inside
    the query, and a URL with no path at all (``https://host?x``, where we use ``/``).
    A ``#fragment`` is dropped: fetch never sends it. A leading ``./`` of ``path`` is
    dropped, as the browser's URL parser does. Raises ManifestError for a URL that is
    not http(s) with a host, UnsafePathError for an unsafe ``path``.
    """
    head, query = _split_url(manifest_url)
    return head[: head.rfind("/") + 1] + shard_relpath(path) + query


def signature_url(manifest_url: str) -> str:
    """Return the URL of the signature of the manifest at ``manifest_url``: its path plus
    ``.sig.json``, then the manifest URL's query string, the rule of :func:`shard_url`
    (docs/design.md, "Signed models"), so an origin that needs ``?tfjs-format=file`` or a
    signed-URL query on every file gets it here too. A ``#fragment`` is dropped."""
    head, query = _split_url(manifest_url)
    return head + SIGNATURE_SUFFIX + query


def _split_url(url: str) -> tuple[str, str]:
    """Split ``url`` into (scheme://host/path, ``?query`` or ''), dropping a fragment."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https", "file"):
        raise ManifestError(f"manifest URL {url!r} is not an http(s) or file URL")
    base = url.split("#", 1)[0]
    head, qmark, query = base.partition("?")
    authority_end = head.find("/", len(scheme) + 3)
    authority = head[len(scheme) + 3:] if authority_end < 0 else head[len(scheme) + 3:authority_end]
    if scheme.lower() == "file":  # file:///path: this machine, no host (daemon/filesource.py)
        if authority_end < 0 or authority not in ("", "localhost"):
            raise ManifestError(f"manifest URL {url!r} must be file:///path")
        return head, qmark + query
    if not authority or authority.startswith(("@", ":")) or authority.endswith("@"):
        raise ManifestError(f"manifest URL {url!r} has no host")
    if authority_end < 0:
        head += "/"
    return head, qmark + query


def parse_manifest(
    data: bytes, *, manifest_url: str, max_total: int = DEFAULT_MAX_TOTAL
) -> Manifest:
    """Parse and check a manifest fetched from ``manifest_url``; return a :class:`Manifest`.

    Accepts a graph-model or layers-model ``model.json`` (an object with a
    ``modelTopology`` object and a ``weightsManifest`` list; ``format`` may be absent,
    then the topology tells: a graph has ``node``) and a bare weights manifest (a
    non-empty JSON list of groups). Raises ManifestError (``file`` = the manifest's
    name, or the offending path) for: invalid JSON, neither format, a group or weight
    of the wrong shape or type, an unknown dtype or quantization, a bad shape, a
    group with weights but no paths, a path listed twice or used both as a file and
    as a directory (or as the manifest's own name), and a total (the least total, for
    string weights) over ``max_total``. Raises UnsafePathError for an unsafe path.
    Pure: no I/O.

    Memory: the ``modelTopology`` (the bulk of a big model.json) is checked as JSON but
    never built (:func:`~.entrypoint.scan_manifest`); only the weight groups and
    ``format`` are decoded. A 43 MiB topology of 15 million ``{}`` nodes took 1.08 GB
    above the bytes with ``json.loads``, and takes ~3 MiB and half the time this way
    (docs/performance.md, "Parsing manifests").
    """
    filename = manifest_filename(manifest_url)

    def fail(reason: str, **kw: Any) -> ManifestError:
        kw.setdefault("file", filename)
        return ManifestError(reason, **kw)

    try:
        found = scan_manifest(data)
    except NestingError:
        raise fail("JSON nested too deeply to be a TF.js manifest") from None
    except JSONScanError as exc:
        raise fail(f"not valid JSON: {exc}") from exc

    first = data[found.root.start:found.root.start + 1]
    if first == b"{":
        kind = _model_kind(data, found, fail)
    elif first != b"[":
        raise fail(f"neither a model.json object nor a weights manifest list: a JSON "
                   f"{_SCALAR_NAMES.get(first, 'number')}")
    span = groups_span(data, found)
    assert span is not None  # _model_kind made sure of weightsManifest
    try:
        raw_groups = load_groups(data, span)
    except ValueError as exc:  # past MAX_GROUP_VALUES: never built
        raise fail(str(exc)) from None
    if first == b"[":
        kind = "weights-manifest"
        if not raw_groups:
            raise fail("a weights manifest with no weight groups")
    elif not isinstance(raw_groups, list):
        raise fail("weightsManifest is not a list of weight groups")

    groups = [_parse_group(i, g, fail) for i, g in enumerate(raw_groups)]
    _check_paths(groups, filename, fail)
    total = sum(g.min_size for g in groups)
    if total > max_total:
        raise fail("weights add up to more than the cap on one model (max_model_bytes)",
                   expected=max_total, actual=total)
    return Manifest(kind=kind, filename=filename, groups=groups)


# The JSON type a scalar document is, by its first byte, for the "neither" message.
_SCALAR_NAMES = {b'"': "str", b"t": "bool", b"f": "bool", b"n": "NoneType"}


def _model_kind(data: bytes, found: Scan, fail: Any) -> str:
    members = found.members
    if "weightsManifest" not in members or "modelTopology" not in members:
        missing = [k for k in ("modelTopology", "weightsManifest") if k not in members]
        raise fail(f"neither a model.json nor a weights manifest: no {' and no '.join(missing)}")
    if data[members["weightsManifest"].start:members["weightsManifest"].start + 1] != b"[":
        raise fail("weightsManifest is not a list of weight groups")
    topology = members["modelTopology"]
    if data[topology.start:topology.start + 1] != b"{":
        raise fail("modelTopology is not a JSON object")
    fmt = found.load(data, "format") if "format" in members else None
    if fmt is None:
        return "graph-model" if "node" in topology.has else "layers-model"
    if fmt not in _KINDS:
        raise fail(f"unknown format {fmt!r} (expected one of {', '.join(_KINDS)})")
    return str(fmt)


def _parse_group(index: int, raw: Any, fail: Any) -> Group:
    where = f"weight group {index + 1}"
    if not isinstance(raw, dict):
        raise fail(f"{where} is not a JSON object")
    paths = raw.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise fail(f"{where}: 'paths' is missing or not a list of strings")
    weights_raw = raw.get("weights")
    if not isinstance(weights_raw, list):
        raise fail(f"{where}: 'weights' is missing or not a list")
    if not paths and weights_raw:
        raise fail(f"{where} has weights but no paths")
    rel = [shard_relpath(p) for p in paths]
    weights = [_parse_weight(where, j, w, fail) for j, w in enumerate(weights_raw)]
    sizes = [w.nbytes for w in weights]
    expected = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    return Group(paths=rel, weights=weights, expected_size=expected, index=index)


def _parse_weight(where: str, j: int, raw: Any, fail: Any) -> Weight:
    if not isinstance(raw, dict):
        raise fail(f"{where}: weight {j + 1} is not a JSON object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise fail(f"{where}: weight {j + 1} has no name")
    what = f"{where}: weight {name!r}"
    shape = raw.get("shape")
    if not isinstance(shape, list):
        raise fail(f"{what}: shape {shape!r} is not a list")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise fail(f"{what}: shape {shape!r} has {d!r}, not a non-negative integer")
    dtype = raw.get("dtype")
    if dtype != STRING_DTYPE and dtype not in DTYPE_SIZES:
        raise fail(f"{what}: unknown dtype {dtype!r}")
    quant = None
    if "quantization" in raw:
        q = raw["quantization"]
        qdtype = q.get("dtype") if isinstance(q, dict) else None
        if qdtype not in QUANTIZED_SIZES:
            raise fail(f"{what}: unknown quantization dtype {qdtype!r}")
        if dtype not in _QUANTIZABLE[qdtype]:
            raise fail(f"{what}: {dtype} weights cannot be quantized as {qdtype}")
        quant = qdtype
    return Weight(name=name, shape=list(shape), dtype=dtype, quantization=quant)


def _check_paths(groups: list[Group], filename: str, fail: Any) -> None:
    """Refuse two groups (or entries) naming one file, and a file that is also a directory."""
    seen: set[str] = {filename}
    for g in groups:
        for p in g.paths:
            if p in seen:
                what = "the manifest's own name" if p == filename else "listed twice"
                raise fail(f"shard path {p!r} is {what}", file=p)
            seen.add(p)
    dirs = {p[:i] for p in seen for i in range(len(p)) if p[i] == "/"}
    clash = sorted(seen & dirs)
    if clash:
        raise fail(f"path {clash[0]!r} is both a file and a directory", file=clash[0])
