"""Tests of shardsync.daemon.tls: what a failed handshake is said to mean.

The handshakes themselves fail against a real nginx in test_origins_tls.py; here the
alerts that nginx cannot be made to send (a TLS 1.3 ``certificate_required``), and the
search down an exception chain as httpx and trio build it.
"""

from __future__ import annotations

import ssl

import pytest

from shardsync.daemon.tls import describe_tls_error, find_ssl_error, tls_context


def ssl_error(reason: str) -> ssl.SSLError:
    err = ssl.SSLError(1, f"[SSL: {reason}] alert")
    err.reason = reason  # type: ignore[misc]
    return err


@pytest.mark.parametrize(("reason", "words"), [
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "requires a client certificate"),
    ("SSLV3_ALERT_HANDSHAKE_FAILURE", "refused the TLS handshake"),
    ("TLSV1_ALERT_UNKNOWN_CA", "does not trust our client certificate"),
    ("WRONG_VERSION_NUMBER", "did not answer in TLS"),
    ("SOMETHING_NEW", "TLS handshake failed (something new)"),
])
def test_alerts_are_said_in_words(reason, words):
    assert words in describe_tls_error(ssl_error(reason))


def test_the_ssl_error_is_found_down_causes_and_contexts():
    inner = ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED")
    try:
        try:
            try:
                raise inner
            except ssl.SSLError as e:
                raise OSError("broken") from e
        except OSError:
            raise RuntimeError("outer") from None
    except RuntimeError as outer:
        assert outer.__cause__ is None and outer.__suppress_context__
        assert find_ssl_error(outer) is inner
    assert find_ssl_error(ValueError("x")) is None


def test_the_default_context_verifies_against_the_system_store():
    ctx = tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
