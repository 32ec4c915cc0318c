"""Tests of shardsync.daemon.urls: userinfo taken out, hidden, and prefixes compared."""

from __future__ import annotations

import pytest

from shardsync.daemon.urls import origin_key, redact_url, split_userinfo


@pytest.mark.parametrize(("url", "canonical", "userinfo"), [
    ("https://e.com/m.json", "https://e.com/m.json", None),
    ("https://u:p@e.com/m.json?x=@", "https://e.com/m.json?x=@", ("u", "p")),
    ("https://u%3A:p%40w@e.com:8443/m.json", "https://e.com:8443/m.json", ("u:", "p@w")),
    ("https://tok@e.com/m.json", "https://e.com/m.json", ("tok", "")),
])
def test_split_userinfo(url, canonical, userinfo):
    assert split_userinfo(url) == (canonical, userinfo)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://e.com/a@b", "https://e.com/a@b"),
    ("https://u:pw@e.com/m.json", "https://***@e.com/m.json"),
    ("https://u:p@w@e.com?q=@", "https://***@e.com?q=@"),
    ("http://u:pw@[::1]:99999/x", "http://***@[::1]:99999/x"),  # unparsable port: still hidden
    ("no scheme u:pw@x", "no scheme u:pw@x"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(("url", "key"), [
    ("HTTPS://E.com:443/A/b?Q", "https://e.com/A/b?Q"),
    ("http://e.com:80/", "http://e.com/"),
    ("http://e.com:8080", "http://e.com:8080"),
    ("https://u:p@[::1]:443/x", "https://[::1]/x"),
])
def test_origin_key(url, key):
    assert origin_key(url) == key
