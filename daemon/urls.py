"""URLs as shardsync stores and shows them: without userinfo, matched against prefixes.

A model URL may carry ``user:password@``; that is a credential, not part of the
file's identity. :func:`split_userinfo` takes it out once, when the config is read, so
every URL stored (snapshots, download records, partial sidecars) or shown (logs,
status, events, metrics, errors) is the canonical one; the credential travels apart
(``ModelConfig.userinfo``) to the one place that sends it (``httpclient``).
:func:`redact_url` is for the URLs shardsync did not build itself (a config value it
refuses, a redirect target): it hides their userinfo too.

:func:`origin_key` is how an ``[[origin]]`` prefix is compared with a URL: scheme and
host lower-cased, a default port dropped, so ``HTTPS://Host:443/x`` is under
``https://host/``.

:func:`file_path` is what a ``file://`` URL (a mounted USB stick) may name: here, with
no I/O, so reading a config that holds one loads nothing more.
"""

from __future__ import annotations

import os
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "file_path", "file_url", "origin_key", "redact_url", "split_userinfo"]

#: What stands in for a URL's userinfo when one is shown.
REDACTED = "***"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _netloc(hostname: str, port: int | None, scheme: str) -> str:
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return host
    return f"{host}:{port}"


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its userinfo, and the (percent-decoded) ``(user, password)``
    it held, or None. Raises ValueError (from urlsplit) for a URL it cannot parse."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)), (user, password)


def redact_url(url: str) -> str:
    """``url`` with any userinfo replaced by ``***``: safe to log or show. Never
    raises: an unparsable string loses everything between ``//`` and the last ``@``
    before the path."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        return url
    end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if i != -1:
            end = min(end, i)
    authority = rest[:end]
    if "@" not in authority:
        return url
    return f"{scheme}//{REDACTED}@{authority.rpartition('@')[2]}{rest[end:]}"


def origin_key(url: str) -> str:
    """``url`` as prefixes are compared with it: ``scheme://host[:port]`` lower-cased
    (the port only if not the scheme's default), then the path, query and fragment as
    they are; userinfo dropped. Raises ValueError for a URL it cannot parse."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = _netloc((parts.hostname or "").lower(), parts.port, scheme)
    tail = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    return f"{scheme}://{netloc}{tail}"


def file_path(url: str) -> str:
    """The absolute path ``url`` names: ``file:///abs/path`` or ``file://localhost/...``,
    percent-decoded. ValueError for another host, a query or fragment, a relative path,
    a NUL, or a ``.`` / ``..`` / empty segment (a path that could climb out of the
    directory the manifest is in)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ValueError(f"{url!r} is not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URL {url!r} names a host ({parts.netloc!r}); "
                         "only file:///path (this machine) can be read")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"file URL {url!r} has a query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"file URL {url!r} has no absolute path (write file:///path)")
    if "\0" in path or any(seg in ("", ".", "..") for seg in path[1:].split("/")):
        raise ValueError(f"file URL {url!r} has an empty, '.' or '..' segment")
    return path


def file_url(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URL of the absolute ``path`` (percent-encoded as needed)."""
    text = os.fspath(path)
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path")
    return "file://" + quote(text)
