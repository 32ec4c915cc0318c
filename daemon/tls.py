"""TLS for shardsync: the contexts origins are reached with, and what a failed handshake means.

:func:`tls_context` builds the one kind of ``ssl.SSLContext`` shardsync verifies
servers with. Without a ``ca_file`` it is ``ssl.create_default_context()``: the
*system* trust store, found through OpenSSL's default paths, which honour
``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` (httpx's own default would be certifi's
bundle, which ignores a CA installed on the device). With a ``ca_file`` only that
file's CAs are trusted: an origin behind a company CA trusts no public CA as well.

:func:`describe_tls_error` turns the ``ssl`` exception at the bottom of a failed
connection (httpx wraps it, trio wraps it again as ``BrokenResourceError``) into one
sentence saying what is wrong: unknown CA, self-signed, expired, hostname mismatch,
handshake refused, client certificate wanted. ``fetch.py`` calls it while it
translates httpx's exceptions; config.py calls :func:`tls_context` only to check the
files while the config is read (a bad PEM is a config error, not a sync failure).
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["describe_tls_error", "find_ssl_error", "tls_context"]

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that an operator can act on, and what to say.
_UNKNOWN_CA = ("the server's certificate is signed by an unknown CA (not in the system "
               "trust store; set ca_file in an [[origin]] for this URL)")
_SELF_SIGNED = ("the server's certificate is self-signed and not trusted (set ca_file in an "
                "[[origin]] for this URL to trust it)")
_VERIFY_CODES = {
    2: _UNKNOWN_CA,    # UNABLE_TO_GET_ISSUER_CERT
    9: "the server's certificate is not valid yet (check this device's clock)",
    10: "the server's certificate has expired",
    18: _SELF_SIGNED,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: _SELF_SIGNED,  # SELF_SIGNED_CERT_IN_CHAIN
    20: _UNKNOWN_CA,   # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: _UNKNOWN_CA,   # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "the server's certificate has been revoked",
    62: "hostname mismatch: the server's certificate is not valid for this host",
    64: "hostname mismatch: the server's certificate is not valid for this IP address",
}

# OpenSSL reason codes of a handshake the *server* ended (an alert it sent us), and of
# an answer that was no TLS at all.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (set "
                                         "client_cert and client_key in an [[origin]])",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused our client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust our client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says our client certificate has expired",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the TLS handshake (no protocol "
                                     "version or cipher in common?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server refused the TLS handshake: no TLS version "
                                    "in common",
    "TLSV1_UNRECOGNIZED_NAME": "the server refused the TLS handshake (it serves no site "
                               "by this name)",
    "TLSV1_ALERT_INTERNAL_ERROR": "the server refused the TLS handshake (internal error)",
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS (is this an http:// port?)",
}


def tls_context(
    ca_file: Path | None = None, client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ssl.SSLContext:
    """A client context verifying servers: the system trust store, or only ``ca_file``;
    with ``client_cert`` and ``client_key`` (PEM) presented when a server asks.

    Raises ``ssl.SSLError`` for a file that is not PEM (or a key that does not match
    the certificate), ``OSError`` for one that cannot be read, ValueError for an
    encrypted key (nobody could type its passphrase on a kiosk).
    """
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None,
                            password=_no_password)
    return ctx


def _no_password() -> str:
    raise ValueError("the key is encrypted; shardsync needs it unencrypted (mode 0600)")


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` somewhere in ``exc``'s chain (causes and contexts), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def describe_tls_error(err: ssl.SSLError) -> str:
    """One sentence saying what ``err`` means for an operator, with OpenSSL's own words."""
    if isinstance(err, ssl.SSLCertVerificationError):
        code = getattr(err, "verify_code", None)
        detail = getattr(err, "verify_message", None) or err.reason or str(err)
        known = _VERIFY_CODES.get(code) if isinstance(code, int) else None
        if known:
            return f"TLS: {known} ({detail})"
        return f"TLS: the server's certificate was not accepted ({detail})"
    reason = err.reason or ""
    known = _REASONS.get(reason)
    detail = reason.lower().replace("_", " ") if reason else (str(err) or type(err).__name__)
    if known:
        return f"TLS: {known} ({detail})"
    return f"TLS handshake failed ({detail})"
