"""The nginx configuration that serves site_dir to kiosk pages the way TF.js needs.

TF.js checks neither status codes nor sizes of weight shards, and the layout in
site_dir (docs/design.md) relies on caches keying shards by URL. So the web server in
front of site_dir is part of correctness, not a detail left to the operator:

- a missing file is a real 404 (no SPA fallback, no index page, no listing), so
  a broken URL fails loudly instead of loading HTML as weights; so is anything
  the store is still writing (its ``.tmp-`` names) and any symlink;
- ``*.json`` is ``application/json``; everything else, including shards without
  an extension (face-api's), is ``application/octet-stream``; the one exception is
  the page script ``<location>shardsync.js`` (:mod:`.pagescript`), served as
  ``text/javascript`` (a page that sends ``nosniff`` would refuse it as anything
  else), ``no-cache`` so that an upgraded script reaches the pages;
- the entry-point manifest ``<location><name>/<manifest>`` is ``no-cache``, with
  nginx's own validators (ETag, Last-Modified): a check of an unchanged one is a
  ``304``. The store gives every new entry point an mtime a whole second past the
  one it replaces (``store/_site.py``), so those validators, built from mtime
  seconds and size, always change with it; only files under
  ``<location><name>/versions/<version>/``, whose URL names their version and
  which never change, are cached for a year as ``immutable``;
- CORS for pages on another origin (``Access-Control-Allow-Origin: *``), with
  ``OPTIONS`` preflights answered ``204``.

``shardsync nginx-config -c FILE`` prints :func:`render_nginx_config`; the
README shows :func:`render_nginx_location` for an existing server block. The
end-to-end tests run a real nginx on exactly this text.
"""

from __future__ import annotations

import os
import re

from shardsync.store import TMP_PREFIX

from .errors import ConfigError
from .pagescript import PAGE_SCRIPT

__all__ = ["render_nginx_config", "render_nginx_location"]

#: A year, the longest max-age caches honour (RFC 9111 advises no more); the
#: URL of a versioned file names its version, so it can never become stale.
IMMUTABLE_MAX_AGE = 31536000

#: Browsers may reuse a preflight answer this long (Chromium caps at 2 h anyway).
PREFLIGHT_MAX_AGE = 7200

# URL prefix under which site_dir appears: plain path segments only, so that it
# can be used verbatim in a prefix location and, escaped, in a regex location.
_LOCATION_RE = re.compile(r"^/(?:[A-Za-z0-9._~-]+/)*$")

# listen accepts "port", "host:port", "[v6]:port", "unix:/path"; refuse only
# what would break out of the directive.
_LISTEN_RE = re.compile(r"^[A-Za-z0-9.:\[\]/_-]+$")

# Characters that would end, quote or interpolate (``$``) inside a quoted
# nginx string, or cannot appear in a file name nginx is given.
_BAD_PATH_CHARS = set('"\\$;{}') | {chr(c) for c in range(0x20)} | {"\x7f"}


def _check_site_dir(site_dir: str | os.PathLike[str]) -> str:
    path = os.path.abspath(os.fspath(site_dir))
    bad = sorted(set(path) & _BAD_PATH_CHARS)
    if bad:
        raise ConfigError(
            f"site_dir {path!r} contains {''.join(bad)!r}, which cannot be put in an nginx config",
            key="site_dir",
        )
    return path.rstrip("/") + "/"


def _check_location(location: str) -> str:
    if not _LOCATION_RE.match(location) or location == "/":
        raise ConfigError(
            f"location {location!r} must be a URL path below / that starts and ends with '/'"
            " and holds only letters, digits and '._~-' (e.g. '/models/')",
            key="location",
        )
    return location


def _headers(cache_control: str | None, *, cache_always: bool = True) -> list[str]:
    """add_header lines for one location.

    nginx replaces, not merges, the add_header list of an enclosing location as
    soon as a nested one has any, so every location states all of them.
    CORS headers go on every answer (``always``), errors included, so a page on
    another origin can see a 404 as a 404 rather than as an opaque CORS failure.
    """
    lines = [
        'add_header Access-Control-Allow-Origin "*" always;',
        'add_header Access-Control-Allow-Methods "GET, HEAD, OPTIONS" always;',
        # Echo what the preflight asks for: the files are public, and TF.js lets
        # pages add request headers through requestInit.
        "add_header Access-Control-Allow-Headers $http_access_control_request_headers always;",
        f"add_header Access-Control-Max-Age {PREFLIGHT_MAX_AGE} always;",
    ]
    if cache_control is not None:
        always = " always" if cache_always else ""
        lines.append(f'add_header Cache-Control "{cache_control}"{always};')
    return lines


def _serve() -> list[str]:
    """Lines every location needs: preflight answer and strict file lookup.

    ``if``/``return`` and ``try_files`` belong to the location that finally
    matches (nested ones do not run their parent's), hence repeated.
    ``try_files $uri =404`` serves regular files only: a directory, a missing
    file or a symlink (refused by disable_symlinks) is a plain 404, never an
    index page, a listing or a redirect to one.
    """
    return [
        "if ($request_method = OPTIONS) {",
        "    return 204;",
        "}",
        "try_files $uri =404;",
    ]


def render_nginx_location(
    site_dir: str | os.PathLike[str], *, location: str = "/models/"
) -> str:
    """Return the nginx ``location`` block that serves ``site_dir`` at URL ``location``.

    For pasting into an existing ``server { }``. ``site_dir`` is made absolute
    (not resolved: symlinks above it are the operator's business and allowed);
    a symlink *inside* it is never followed. ``location`` is a URL path that
    starts and ends with ``/``. Raises :class:`ConfigError` (``key`` names the
    argument) for a value that cannot be written into nginx syntax safely.
    """
    root = _check_site_dir(site_dir)
    loc = _check_location(location)
    rx = re.escape(loc)
    versioned = [
        # A file whose URL names its version never changes (docs/design.md):
        # cache it for good. Only on success (no "always"): a 404 must not
        # stick in a cache, the version may be being published right now.
        *_headers(f"public, max-age={IMMUTABLE_MAX_AGE}, immutable", cache_always=False),
        *_serve(),
    ]
    # Everything else, the entry points included: revalidated on every use, with
    # nginx's own ETag and Last-Modified, so an unchanged entry point costs a 304.
    # They are the mtime in seconds (and the size): sound for an entry point only
    # because the store never gives a new one the mtime second of the one it
    # replaces (store/_site.py, replaced_mtime_ns).
    other = [*_headers("no-cache"), *_serve()]
    script = ["default_type text/javascript;", *_headers("no-cache"), *_serve()]
    body = [
        f'alias "{root}";',
        "autoindex off;",
        # Shards are hardlinks, never symlinks: refuse any symlink below
        # site_dir (nothing outside it is ever served), but allow them above
        # it ("from"), where the operator may have placed site_dir.
        "disable_symlinks on from=$document_root;",
        "default_type application/octet-stream;",
        "types {",
        "    application/json json;",
        "}",
        "charset off;",
        *other,
        "",
        # The store's temporary names (a version being built, an entry point
        # about to be renamed into place) are never served, even half-written.
        f"location ~ /{re.escape(TMP_PREFIX)} {{",
        *("    " + line for line in _headers("no-cache")),
        "    return 404;",
        "}",
        "",
        f"location ~ ^{rx}[^/]+/versions/[^/]+/. {{",
        *("    " + line for line in versioned),
        "}",
        "",
        # An exact match wins over the regexes: the one file at site_dir's root.
        f"location = {loc}{PAGE_SCRIPT} {{",
        *("    " + line for line in script),
        "}",
    ]
    return "\n".join([f"location {loc} {{", *("    " + ln if ln else "" for ln in body), "}"])


def render_nginx_config(
    site_dir: str | os.PathLike[str],
    *,
    listen: str = "127.0.0.1:8080",
    location: str = "/models/",
) -> str:
    """Return a complete nginx ``server { }`` block serving ``site_dir`` at ``location``.

    It goes into nginx's ``http { }`` context (e.g. a file in
    ``/etc/nginx/conf.d/``). ``listen`` is the value of nginx's ``listen``
    directive. Every URL outside ``location`` answers 404. See
    :func:`render_nginx_location` for the rules and the errors raised.
    """
    if not _LISTEN_RE.match(listen):
        raise ConfigError(f"listen {listen!r} is not an nginx listen address", key="listen")
    loc = render_nginx_location(site_dir, location=location)
    lines = [
        "# Generated by `shardsync nginx-config`: serves shardsync's site_dir to TF.js pages.",
        "server {",
        f"    listen {listen};",
        "    server_tokens off;",
        "",
        *("    " + ln if ln else "" for ln in loc.splitlines()),
        "",
        "    location / {",
        *("        " + ln for ln in _headers("no-cache")),
        "        return 404;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)
