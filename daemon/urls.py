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
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "origin_key", "redact_url", "split_userinfo"]

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
