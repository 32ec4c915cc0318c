"""A shardsync site as an origin: the version its entry point pins, and whether to trust it.

Why: a site shardsync publishes serves ``<name>/<manifest>``, the origin's manifest with
only its weight paths rewritten to ``versions/<id>/...``, beside
``<name>/versions/<id>/<manifest>``, the origin's manifest byte for byte. Synced as a
plain manifest, the entry point would be published as
``versions/<v>/versions/<id>/...`` under another id ``v``; synced through the pinned
manifest instead, the downstream holds the same files at the same paths and so, the id
being a tree digest (``shardsync.store``), the same version id ``<id>``
(docs/design.md, "A shardsync site as an origin").

Nothing is added to what a site serves: the claim is read from the entry point's
paths (:func:`claim`), and confirmed only when the pinned manifest, rewritten the way
the store renders every entry point (:func:`.entrypoint.rewrite_paths`), gives the
entry point's exact bytes (:func:`confirms`). An origin whose paths merely look like
``versions/<16 hex>/`` fails that and stays a plain origin. The caller fetches (this
module does no I/O), and checks at the end that the tree digest it built is ``<id>``.

A signed upstream's version holds ``<manifest>.sig.json`` beside its pinned manifest
(:attr:`Claim.signature_url`), never beside the entry point. A downstream with keys
checks that signature, the claim serving only to find it, and holds the pinned files to
it; one without keys carries it as a file of the version, unchecked, so the tree digest
is ``<id>`` all the same (``Syncer._signed`` and ``Syncer._carried_signature`` in
:mod:`.sync`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardsync.store import VERSION_ID_LEN, VERSIONS_DIR, ShardsyncError

from .entrypoint import groups_span, load_groups, rewrite_paths, scan_manifest
from .jsonscan import JSONScanError
from .tfjs import shard_url, signature_url

__all__ = ["Claim", "borrowable", "claim", "confirms"]

# A weight path of an entry point: versions/<id>/<the origin's own relative path>.
_PINNED = re.compile(rf"{VERSIONS_DIR}/([0-9a-f]{{{VERSION_ID_LEN}}})/(.+)", re.DOTALL)


@dataclass(frozen=True)
class Claim:
    """What an entry point says if it is a shardsync site's: the version ``version`` it
    pins and the URL ``manifest_url`` of that version's own manifest."""

    version: str
    manifest_url: str

    @property
    def prefix(self) -> str:
        """The directory the entry point's paths point into: ``versions/<id>/``."""
        return f"{VERSIONS_DIR}/{self.version}/"

    @property
    def signature_url(self) -> str:
        """Where the version's signature is when upstream's model is signed: beside its
        pinned manifest, ``versions/<id>/<manifest>.sig.json``, a file of the version
        like any other. A site never serves one beside its entry point (that is
        rewritten; a signature over it would not verify), so this is the only place
        a downstream finds it."""
        return signature_url(self.manifest_url)


def claim(manifest_url: str, data: bytes) -> Claim | None:
    """The version the manifest ``data`` (fetched from ``manifest_url``) would pin as a
    shardsync site's entry point, or None when it cannot be one.

    It can when it has weight paths and every one is ``versions/<id>/<rest>`` with one
    ``<id>`` (a version id: :data:`VERSION_ID_LEN` hex digits). Only a claim: see
    :func:`confirms`. Pure; anything that is not a manifest gives None (the caller's
    parse reports it).
    """
    try:
        found = scan_manifest(data)
        span = groups_span(data, found)
        groups = None if span is None else load_groups(data, span)
    except (JSONScanError, ValueError):
        return None
    if not isinstance(groups, list):
        return None
    ids = set()
    for group in groups:
        paths = group.get("paths") if isinstance(group, dict) else None
        if not isinstance(paths, list):
            return None
        for path in paths:
            m = _PINNED.fullmatch(path) if isinstance(path, str) else None
            if m is None:
                return None
            ids.add(m[1])
    if len(ids) != 1:
        return None
    (version,) = ids
    head = manifest_url.partition("#")[0].partition("?")[0]
    name = head[head.rfind("/") + 1:]  # as in the URL: shard_url pastes, never encodes
    return Claim(version, shard_url(manifest_url, f"{VERSIONS_DIR}/{version}/{name}"))


def confirms(found: Claim, entry: bytes, pinned: bytes) -> bool:
    """Whether ``pinned`` (fetched from ``found.manifest_url``) is the manifest whose
    entry point is ``entry``: rendered as the store renders every entry point, it gives
    ``entry`` byte for byte. Equal bytes, not equal JSON: that is what a shardsync site
    serves, and a big topology is never built (docs/performance.md)."""
    try:
        return rewrite_paths(pinned, found.prefix) == entry
    except ShardsyncError:  # not a manifest at all: not this entry point's
        return False


def borrowable(found: Claim, path: str, held_url: str) -> bool:
    """Whether the file held from ``held_url`` may lend its validators to the file
    ``path`` of ``found``'s version: it is the same relative path in another version
    of the same site (``<dir>/versions/<other>/<path>``), which a shardsync site links
    from one object when its bytes did not change, so nginx's ETag (mtime and size)
    is the same. Only a hint: a wrong 304 is caught by the version id check."""
    new = found.manifest_url.rsplit("/", 1)[0].rsplit("/", 1)[0]  # <dir>/versions
    head = held_url.partition("?")[0]
    if not head.startswith(new + "/") or not head.endswith("/" + path):
        return False
    other = head[len(new) + 1:len(head) - len(path) - 1]
    return bool(re.fullmatch(rf"[0-9a-f]{{{VERSION_ID_LEN}}}", other)) and other != found.version
