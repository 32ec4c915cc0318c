"""Checking a whole JSON document while building only the members asked for.

Why this exists: ``json.loads`` of a 43 MiB model.json whose ``modelTopology`` holds 15
million ``{}`` nodes took 1.43 GB of RSS (issue 14): every value of the document becomes
a Python object, though shardsync needs only ``weightsManifest``, ``format`` and whether
the topology has a ``node`` key. :func:`scan` walks the document's bytes instead,
checks that all of it is JSON as a browser parses it (strict UTF-8, no ``NaN``), and
returns where the wanted members lie; the caller ``json.loads`` only those slices.
Measurements (peak RSS, parse time) are in docs/performance.md, "Parsing manifests".

How it stays fast and small: a container that fits in a small window is parsed by the
C decoder (``raw_decode``) and thrown away at once, so memory is bounded by the window
(64 KiB of text); a larger one is walked member by member, and runs of trivial array
elements (``{}``, ``[]``, strings, numbers) are skipped by one regular expression, so
the hostile ``{}`` case costs one C call, not 15 million Python steps. Differences
from ``json.loads``: nesting deeper than :data:`MAX_DEPTH` is refused (``json.loads``
stops near 1000 with RecursionError), UTF-16 and UTF-32 are refused (a browser reads
model.json as UTF-8), and an integer with more digits than Python converts (4300) is
accepted where it is not built (a browser accepts it too).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_DEPTH", "JSONScanError", "NestingError", "Scan", "Span", "scan"]

#: Deepest nesting accepted. Real TF.js topologies nest about 10 deep (a layers model
#: inside a wrapper inside a functional model); 256 is far above that and keeps the
#: walk's Python recursion well inside the interpreter's limit.
MAX_DEPTH = 256

# Text windows tried, smallest first, before a container is walked by hand: most real
# nodes fit in 4 KiB; 64 KiB of text costs at most ~1.5 MiB of objects (``{}`` is 3
# bytes of text and 72 bytes of Python), thrown away at once.
_WINDOWS = (256, 4096, 65536)

# A key longer than this cannot be one of the names asked for; it is checked, not decoded.
_MAX_KEY = 256

_WS = re.compile(rb"[ \t\n\r]*+")
_STR = rb'"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+"'
_NUM = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+"
_STRING = re.compile(_STR)
_SCALAR = re.compile(_NUM + rb"|true|false|null")
# Array elements that need no walk, each with its comma: the hostile 15-million-``{}``
# topology is one match of this, in C.
_TRIVIAL_RUN = re.compile(
    rb"(?:(?:\{[ \t\n\r]*+\}|\[[ \t\n\r]*+\]|" + _STR + rb"|" + _NUM
    + rb"|true|false|null)[ \t\n\r]*+,[ \t\n\r]*+)++"
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


class JSONScanError(ValueError):
    """The document is not JSON; ``pos`` is the byte offset where that shows."""

    def __init__(self, reason: str, pos: int) -> None:
        super().__init__(f"{reason} at byte {pos}")
        self.reason = reason
        self.pos = pos


class NestingError(JSONScanError):
    """The document nests deeper than :data:`MAX_DEPTH`."""


@dataclass(frozen=True)
class Span:
    """One value of the document: ``data[start:end]``; ``has`` holds which of the keys
    probed for (see :func:`scan`) an object value has as its own members."""

    start: int
    end: int
    has: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scan:
    """What :func:`scan` found: the root value, and for an object root the members kept
    (the last one of a duplicated key, as ``json.loads`` and a browser take)."""

    root: Span
    members: dict[str, Span]

    def load(self, data: bytes, key: str) -> Any:
        """``json.loads`` of member ``key`` alone (KeyError if it was not kept or is absent)."""
        s = self.members[key]
        return json.loads(memoryview(data)[s.start:s.end].tobytes())


def scan(
    data: bytes, *, keep: Collection[str] = (), probe: Mapping[str, Collection[str]] | None = None
) -> Scan:
    """Check that ``data`` is one JSON document; return where its root and members lie.

    ``keep`` names the root object's members whose spans are returned; ``probe`` maps a
    kept member to keys looked for among its own members (``{"modelTopology": ["node"]}``)
    when it is an object. Nothing else is built. Raises JSONScanError (a ValueError) for
    anything ``json.loads`` with ``NaN`` refused would refuse, with the byte offset, and
    NestingError beyond :data:`MAX_DEPTH`. A document that is not UTF-8 (a browser reads
    model.json as UTF-8; a UTF-8 BOM is allowed) is refused too. Pure: no I/O.
    """
    probe = probe or {}
    _check_utf8(data)
    pos = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    start = _skip_ws(data, pos)
    members: dict[str, Span] = {}
    if data[start:start + 1] == b"{":

        def visit(ks: int, ke: int, vs: int) -> int:
            key = _key(data, ks, ke)
            if key is None or key not in keep:
                return _value_end(data, vs, 1)
            wanted = probe.get(key)
            if wanted and data[vs:vs + 1] == b"{":
                found: set[str] = set()

                def look(ks2: int, ke2: int, vs2: int) -> int:
                    k = _key(data, ks2, ke2)
                    if k is not None and k in wanted:
                        found.add(k)
                    return _value_end(data, vs2, 2)

                ve = _object_end(data, vs, 1, look)
                members[key] = Span(vs, ve, frozenset(found))
            else:
                ve = _value_end(data, vs, 1)
                members[key] = Span(vs, ve)
            return ve

        end = _object_end(data, start, 0, visit)
    else:
        end = _value_end(data, start, 0)
    tail = _skip_ws(data, end)
    if tail != len(data):
        raise JSONScanError("extra data after the JSON value", tail)
    return Scan(Span(start, end), members)


def _check_utf8(data: bytes) -> None:
    enc = json.detect_encoding(data)
    if enc not in ("utf-8", "utf-8-sig"):
        raise JSONScanError(f"not UTF-8 (looks like {enc}; a browser reads it as UTF-8)", 0)
    dec = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    step = 1 << 20  # 1 MiB of text at a time: a few MiB of str at most, thrown away
    try:
        for i in range(0, len(data), step):
            dec.decode(view[i:i + step])
        dec.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise JSONScanError(f"not UTF-8 ({exc.reason})", i + exc.start) from None


def _skip_ws(data: bytes, pos: int) -> int:
    m = _WS.match(data, pos)
    assert m is not None  # matches the empty string
    return m.end()


def _key(data: bytes, ks: int, ke: int) -> str | None:
    """The decoded key ``data[ks:ke]``, or None when it is too long to be a name we want."""
    if ke - ks > _MAX_KEY:
        return None
    return str(json.loads(data[ks:ke]))


def _value_end(data: bytes, pos: int, depth: int) -> int:
    """Check the JSON value starting at ``pos``; return the offset just after it."""
    c = data[pos:pos + 1]
    if c == b'"':
        m = _STRING.match(data, pos)
        if m is None:
            raise JSONScanError("invalid string", pos)
        return m.end()
    if c in (b"{", b"["):
        if depth >= MAX_DEPTH:
            raise NestingError(f"nested more than {MAX_DEPTH} deep", pos)
        end = _small_container_end(data, pos)
        if end is not None:
            return end
        if c == b"[":
            return _array_end(data, pos, depth)
        return _object_end(data, pos, depth, lambda ks, ke, vs: _value_end(data, vs, depth + 1))
    m = _SCALAR.match(data, pos)
    if m is None:
        raise JSONScanError("expecting a value", pos)
    return m.end()


def _small_container_end(data: bytes, pos: int) -> int | None:
    """The end of the container at ``pos`` if the C decoder parses it within a window."""
    for size in _WINDOWS:
        # The whole document is valid UTF-8 (checked first), so "ignore" drops only a
        # sequence the window's end cut in two.
        text = data[pos:pos + size].decode("utf-8", "ignore")
        try:
            _, end = _DECODER.raw_decode(text)
        except RecursionError:
            raise NestingError("nested too deeply", pos) from None
        except ValueError:
            if pos + size >= len(data):
                return None  # the walk finds the error and says where
            continue
        return pos + (end if text.isascii() else len(text[:end].encode("utf-8")))
    return None


def _array_end(data: bytes, pos: int, depth: int) -> int:
    p = _skip_ws(data, pos + 1)
    if data[p:p + 1] == b"]":
        return p + 1
    while True:
        m = _TRIVIAL_RUN.match(data, p)
        if m is not None:
            p = m.end()
        p = _skip_ws(data, _value_end(data, p, depth + 1))
        c = data[p:p + 1]
        if c == b"]":
            return p + 1
        if c != b",":
            raise JSONScanError("expecting ',' or ']'", p)
        p = _skip_ws(data, p + 1)


def _object_end(data: bytes, pos: int, depth: int, visit: Callable[[int, int, int], int]) -> int:
    """Walk the object at ``pos``; ``visit(key_start, key_end, value_start)`` checks each
    member's value and returns its end."""
    p = _skip_ws(data, pos + 1)
    if data[p:p + 1] == b"}":
        return p + 1
    while True:
        m = _STRING.match(data, p)
        if m is None:
            raise JSONScanError("expecting a property name in double quotes", p)
        q = _skip_ws(data, m.end())
        if data[q:q + 1] != b":":
            raise JSONScanError("expecting ':'", q)
        p = _skip_ws(data, visit(m.start(), m.end(), _skip_ws(data, q + 1)))
        c = data[p:p + 1]
        if c == b"}":
            return p + 1
        if c != b",":
            raise JSONScanError("expecting ',' or '}'", p)
        p = _skip_ws(data, p + 1)
