"""What an origin's answer says, from its status and headers, for a download; and the
validators (:class:`Validators`) a conditional request sends back.

Each reader raises :class:`~shardsync.daemon.errors.UpstreamError` (naming the file's
URL) for an answer a download must not use, so the fetcher reads as the protocol.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass

import httpx

from .errors import UpstreamError

__all__ = ["Validators", "check_status", "conditional_headers", "content_length",
           "content_range", "refuse_html", "retry_after_seconds"]

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Validators:
    """What the origin said about a file's version: send back for a conditional request."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    @classmethod
    def of(cls, response: httpx.Response) -> Validators:
        return cls(response.headers.get("etag"), response.headers.get("last-modified"))


def conditional_headers(validators: Validators | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if validators and validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators and validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    return headers


_TITLE_RE = re.compile(rb"<title>\s*([^<]{1,200}?)\s*</title>", re.IGNORECASE)

#: nginx's page for ``ssl_verify_client on`` without a client certificate (a 400).
_NO_CLIENT_CERT = b"No required SSL certificate was sent"


def check_status(r: httpx.Response, url: str, body: bytes = b"") -> None:
    """Raise UpstreamError for any status but 200 and 206; ``body`` (the start of the
    answer's body) adds the server's own words when it has some: an HTML page's
    title, or a short text's first line."""
    if r.status_code in (200, 206):
        return
    retry_after = retry_after_seconds(r.headers.get("retry-after"))
    reason = f"HTTP {r.status_code} {r.reason_phrase}".rstrip()
    if r.status_code == 404:
        reason = "not found on the origin (HTTP 404)"
    said = _said(r, body)
    if said and said.lower() not in reason.lower() and said.lower() != r.reason_phrase.lower():
        reason += f": {said}"
    if _NO_CLIENT_CERT in body:
        reason += (" (the server wants a client certificate: set client_cert and client_key "
                   "in an [[origin]] for this URL)")
    raise UpstreamError(reason, status=r.status_code, retry_after=retry_after, file=url)


def _said(r: httpx.Response, body: bytes) -> str:
    """What an error body says in a few words, or "" (binary, JSON, long, empty)."""
    ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
    text = b""
    if ctype == "text/html":
        m = _TITLE_RE.search(body)
        text = m[1] if m else b""
        # nginx titles repeat the status: "400 No required SSL certificate was sent"
        text = re.sub(rb"^\d{3}\s+", b"", text)
    elif ctype == "text/plain":
        text = body.split(b"\n", 1)[0].strip()[:200]
    said = text.decode("utf-8", "replace")
    return "".join(c for c in said if c.isprintable())


def refuse_html(r: httpx.Response, url: str) -> None:
    """A web page where a model file should be: a missing file behind an SPA fallback."""
    ctype = r.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() == "text/html":
        raise UpstreamError(
            "the server sent an HTML page instead of the file (a missing file behind a "
            "catch-all page?)", status=r.status_code, file=url)


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def content_length(r: httpx.Response) -> int | None:
    value = r.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def content_range(r: httpx.Response, url: str) -> tuple[int, int | None]:
    m = _CONTENT_RANGE_RE.match(r.headers.get("content-range", ""))
    if not m:
        raise UpstreamError("206 without a valid Content-Range", status=206, file=url)
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total
