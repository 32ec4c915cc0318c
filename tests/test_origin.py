"""Tests for the test origin (tests/origin.py over the demo origin): real clients against it."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from origin import Origin

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset recognisable


def put(origin: Origin, rel: str, data: bytes = DATA) -> Path:
    """Write a file under the origin's root and return its path."""
    assert origin.root is not None
    path = origin.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


def read_until_error(client: httpx.Client, url: str, **kw) -> tuple[bytes, Exception | None]:
    """GET url, return the body bytes received and the transport error that ended it (or None)."""
    got = bytearray()
    try:
        with client.stream("GET", url, **kw) as resp:
            for chunk in resp.iter_raw():
                got += chunk
    except httpx.TransportError as exc:
        return bytes(got), exc
    return bytes(got), None


# -- plain serving ---------------------------------------------------------------------


def test_full_get_headers_and_body(origin: Origin) -> None:
    put(origin, "m/group1-shard1of1.bin")
    put(origin, "m/model.json", b'{"format": "graph-model"}')
    with httpx.Client() as client:
        r = client.get(origin.url_for("m/group1-shard1of1.bin"),
                       headers={"Accept-Encoding": "gzip, br"})
        j = client.get(origin.url_for("m/model.json"))
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in r.headers
    assert r.headers["etag"] == '"' + hashlib.sha256(DATA).hexdigest()[:32] + '"'
    assert "GMT" in r.headers["last-modified"]
    assert j.headers["content-type"] == "application/json"
    assert j.json() == {"format": "graph-model"}


def test_missing_and_unsafe_paths_are_404(origin: Origin) -> None:
    put(origin, "a.bin")
    with httpx.Client() as client:
        assert client.get(origin.url_for("nope.bin")).status_code == 404
        assert client.get(origin.url_for("m/")).status_code == 404
        assert client.get(origin.url + "/%2e%2e/etc/passwd").status_code == 404
        assert client.get(origin.url + "/").status_code == 404
    assert origin.requests("nope.bin")[0].status == 404


def test_keep_alive_reuses_one_connection(origin: Origin) -> None:
    put(origin, "a.bin")
    put(origin, "b.bin")
    out = curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects}\n",
               origin.url_for("a.bin"), origin.url_for("b.bin"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["1", "0"]


def test_head_has_headers_and_no_body(origin: Origin) -> None:
    put(origin, "a.bin")
    with httpx.Client() as client:
        head = client.head(origin.url_for("a.bin"), headers={"Range": "bytes=0-9"})
        get = client.get(origin.url_for("a.bin"))
        missing = client.head(origin.url_for("b.bin"))
    assert head.status_code == 200  # Range is defined for GET only
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))
    assert head.headers["etag"] == get.headers["etag"]
    assert missing.status_code == 404
    assert origin.bytes_sent("a.bin") == len(DATA)  # only the GET's body


def test_set_file_overrides_and_changes_validators(origin: Origin) -> None:
    put(origin, "a.bin", b"on disk")
    with httpx.Client() as client:
        first = client.get(origin.url_for("a.bin"))
        origin.set_file("a.bin", b"in memory v1")
        second = client.get(origin.url_for("a.bin"))
        origin.set_file("a.bin", b"in memory v2")
        third = client.get(origin.url_for("a.bin"))
        origin.remove_file("a.bin")
        gone = client.get(origin.url_for("a.bin"))
        origin.set_file("new/only-in-memory.json", b"{}")
        mem = client.get(origin.url_for("new/only-in-memory.json"))
    assert (first.content, second.content, third.content) == (
        b"on disk", b"in memory v1", b"in memory v2")
    assert len({first.headers["etag"], second.headers["etag"], third.headers["etag"]}) == 3
    assert second.headers["last-modified"] != third.headers["last-modified"]
    assert gone.status_code == 404
    assert mem.status_code == 200 and mem.headers["content-type"] == "application/json"


def test_changing_a_file_on_disk_changes_its_etag(origin: Origin) -> None:
    path = put(origin, "a.bin", b"one")
    with httpx.Client() as client:
        before = client.get(origin.url_for("a.bin")).headers["etag"]
        path.write_bytes(b"two!")
        after = client.get(origin.url_for("a.bin")).headers["etag"]
    assert before != after


def test_query_string_is_ignored_for_lookup_but_logged(origin: Origin) -> None:
    put(origin, "m/model.json", b"{}")
    with httpx.Client() as client:
        r = client.get(origin.url_for("m/model.json?tfjs-format=file"))
    assert r.status_code == 200 and r.content == b"{}"
    [entry] = origin.requests()
    assert entry.target == "/m/model.json?tfjs-format=file"
    assert entry.path == "m/model.json"
    assert origin.bytes_sent("m/model.json") == 2


def test_redirect_to_a_signed_url(origin: Origin) -> None:
    put(origin, "blobs/abc123")
    signed = origin.url_for("blobs/abc123?X-Amz-Signature=deadbeef&Expires=1")
    origin.redirect("m/group1-shard1of1.bin", signed)
    with httpx.Client(follow_redirects=True) as client:
        r = client.get(origin.url_for("m/group1-shard1of1.bin"))
    assert r.status_code == 200 and r.content == DATA
    assert [h.status_code for h in r.history] == [302]
    assert r.history[0].headers["location"] == signed
    assert str(r.url) == signed
    assert [e.target for e in origin.requests()] == [
        "/m/group1-shard1of1.bin", "/blobs/abc123?X-Amz-Signature=deadbeef&Expires=1"]
    origin.redirect("m/group1-shard1of1.bin", None)
    with httpx.Client() as client:
        assert client.get(origin.url_for("m/group1-shard1of1.bin")).status_code == 404


def test_serves_large_files_intact(origin: Origin) -> None:
    big = os.urandom(1 << 20) * 24  # 24 MiB: several sendfile pieces
    put(origin, "big.bin", big)
    digest = hashlib.sha256()
    with httpx.Client() as client, client.stream("GET", origin.url_for("big.bin")) as r:
        for chunk in r.iter_raw():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(big).hexdigest()
    assert origin.bytes_sent("big.bin") == len(big)


async def test_works_from_trio(origin: Origin) -> None:
    put(origin, "a.bin")
    async with httpx.AsyncClient() as client:
        r = await client.get(origin.url_for("a.bin"), headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == DATA[10:20]


# -- ranges and conditional requests ---------------------------------------------------


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("bytes=0-0", 0, 0),
    ("bytes=100-199", 100, 199),
    ("bytes=10000-", 10000, len(DATA) - 1),
    ("bytes=-40", len(DATA) - 40, len(DATA) - 1),
    ("bytes=10200-999999", 10200, len(DATA) - 1),
    ("bytes=-999999", 0, len(DATA) - 1),
])
def test_range_forms(origin: Origin, spec: str, first: int, last: int) -> None:
    put(origin, "a.bin")
    with httpx.Client() as client:
        r = client.get(origin.url_for("a.bin"), headers={"Range": spec})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert r.content == DATA[first:last + 1]
    assert origin.bytes_sent() == last - first + 1


def test_range_with_curl(origin: Origin) -> None:
    put(origin, "a.bin")
    out = curl("-r", "5-9", origin.url_for("a.bin"))
    assert out.returncode == 0 and out.stdout == DATA[5:10]


@pytest.mark.parametrize("spec", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
def test_unsatisfiable_range_is_416(origin: Origin, spec: str) -> None:
    put(origin, "a.bin")
    with httpx.Client() as client:
        r = client.get(origin.url_for("a.bin"), headers={"Range": spec})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"


def test_any_range_of_an_empty_file_is_416(origin: Origin) -> None:
    put(origin, "empty.bin", b"")
    with httpx.Client() as client:
        r = client.get(origin.url_for("empty.bin"), headers={"Range": "bytes=0-"})
        whole = client.get(origin.url_for("empty.bin"))
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */0"
    assert whole.status_code == 200 and whole.content == b""


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=9-3", "bytes=-", "junk"])
def test_ranges_we_do_not_serve_give_the_whole_file(origin: Origin, spec: str) -> None:
    put(origin, "a.bin")
    with httpx.Client() as client:
        r = client.get(origin.url_for("a.bin"), headers={"Range": spec})
    assert r.status_code == 200 and r.content == DATA
    assert "content-range" not in r.headers


def test_if_none_match(origin: Origin) -> None:
    put(origin, "a.bin")
    url = origin.url_for("a.bin")
    with httpx.Client() as client:
        etag = client.get(url).headers["etag"]
        origin.reset_counters()
        exact = client.get(url, headers={"If-None-Match": etag})
        listed = client.get(url, headers={"If-None-Match": f'"other", W/{etag}'})
        star = client.get(url, headers={"If-None-Match": "*"})
        other = client.get(url, headers={"If-None-Match": '"other"'})
    assert [exact.status_code, listed.status_code, star.status_code] == [304, 304, 304]
    assert exact.content == b"" and exact.headers["etag"] == etag
    assert other.status_code == 200 and other.content == DATA
    assert origin.bytes_sent() == len(DATA)  # only the mismatch sent a body
    assert origin.requests()[0].headers["if-none-match"] == etag


def test_if_modified_since(origin: Origin) -> None:
    put(origin, "a.bin")
    url = origin.url_for("a.bin")
    with httpx.Client() as client:
        lm = client.get(url).headers["last-modified"]
        same = client.get(url, headers={"If-Modified-Since": lm})
        old = client.get(url, headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
        bad_etag_wins = client.get(url, headers={"If-Modified-Since": lm,
                                                 "If-None-Match": '"other"'})
    assert same.status_code == 304
    assert old.status_code == 200
    assert bad_etag_wins.status_code == 200  # If-None-Match takes precedence


def test_if_range(origin: Origin) -> None:
    origin.set_file("a.bin", DATA, mtime=1_700_000_000)
    url = origin.url_for("a.bin")
    with httpx.Client() as client:
        first = client.get(url)
        etag, lm = first.headers["etag"], first.headers["last-modified"]

        def ranged(if_range: str) -> httpx.Response:
            return client.get(url, headers={"Range": "bytes=100-", "If-Range": if_range})

        assert ranged(etag).status_code == 206
        assert ranged(lm).status_code == 206
        assert ranged("W/" + etag).status_code == 200  # weak tags never match If-Range
        origin.set_file("a.bin", DATA[::-1])  # the file changed: both validators are stale
        by_etag, by_date = ranged(etag), ranged(lm)
    assert by_etag.status_code == 200 and by_etag.content == DATA[::-1]
    assert by_date.status_code == 200 and by_date.content == DATA[::-1]


def test_without_validators(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.send_etag = False
    origin.send_last_modified = False
    with httpx.Client() as client:
        r = client.get(origin.url_for("a.bin"))
    assert "etag" not in r.headers and "last-modified" not in r.headers


# -- accounting ------------------------------------------------------------------------


def test_bytes_sent_and_request_log(origin: Origin) -> None:
    put(origin, "m/a.bin")
    put(origin, "m/b.bin")
    put(origin, "m/model.json", b"{}")
    with httpx.Client() as client:
        client.get(origin.url_for("m/a.bin"))
        client.get(origin.url_for("m/b.bin"), headers={"Range": "bytes=0-99"})
        client.get(origin.url_for("m/model.json"))
    assert origin.bytes_sent() == len(DATA) + 100 + 2
    assert origin.bytes_sent("m/a.bin") == len(DATA)
    assert origin.bytes_sent("/m/b.bin") == 100
    assert origin.bytes_sent("m/*.bin") == len(DATA) + 100
    log = origin.requests()
    assert [(e.method, e.path, e.status, e.body_bytes) for e in log] == [
        ("GET", "m/a.bin", 200, len(DATA)),
        ("GET", "m/b.bin", 206, 100),
        ("GET", "m/model.json", 200, 2),
    ]
    assert log[1].headers["range"] == "bytes=0-99"
    assert "accept-encoding" in log[0].headers
    assert [e.path for e in origin.requests("m/*.bin")] == ["m/a.bin", "m/b.bin"]
    origin.reset_counters()
    assert origin.bytes_sent() == 0 and origin.requests() == []


# -- faults ----------------------------------------------------------------------------


def test_fault_drop_closes_mid_body_then_recovers(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drop("*.bin", 1000, times=1)
    with httpx.Client() as client:
        got, err = read_until_error(client, origin.url_for("a.bin"))
        again = client.get(origin.url_for("a.bin"))
    assert isinstance(err, httpx.RemoteProtocolError)
    assert got == DATA[:1000]
    assert again.status_code == 200 and again.content == DATA
    assert [e.body_bytes for e in origin.requests()] == [1000, len(DATA)]


def test_fault_drop_applies_to_ranges_and_only_matching_paths(origin: Origin) -> None:
    put(origin, "a.bin")
    put(origin, "model.json", b"{}")
    origin.fault_drop("*.bin", 10)
    with httpx.Client() as client:
        got, err = read_until_error(client, origin.url_for("a.bin"),
                                    headers={"Range": "bytes=500-"})
        json_ok = client.get(origin.url_for("model.json"))
        got2, err2 = read_until_error(client, origin.url_for("a.bin"))
    assert err is not None and got == DATA[500:510]
    assert json_ok.content == b"{}"
    assert err2 is not None and got2 == DATA[:10]  # times=None: still active
    origin.clear_faults()
    with httpx.Client() as client:
        assert client.get(origin.url_for("a.bin")).content == DATA


def test_fault_drop_with_reset(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drop("a.bin", 100, reset=True)
    out = curl("-o", "/dev/null", origin.url_for("a.bin"))
    assert out.returncode in (18, 56)  # partial file, or "failure receiving" on the RST
    assert origin.requests()[0].body_bytes == 100


def test_fault_truncate_is_a_short_read(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_truncate("a.bin", missing=3, times=1)
    out = curl("-o", "-", "-w", "%{size_download} %{http_code}", origin.url_for("a.bin"))
    assert out.returncode == 18  # CURLE_PARTIAL_FILE
    assert out.stdout == DATA[:-3] + f"{len(DATA) - 3} 200".encode()
    again = curl(origin.url_for("a.bin"))
    assert again.returncode == 0 and again.stdout == DATA


def test_fault_ignore_range(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_ignore_range("a.bin", times=1)
    with httpx.Client() as client:
        plain = client.get(origin.url_for("a.bin"))  # no Range: the fault is not used up
        ignored = client.get(origin.url_for("a.bin"), headers={"Range": "bytes=100-"})
        honoured = client.get(origin.url_for("a.bin"), headers={"Range": "bytes=100-"})
    assert plain.status_code == 200
    assert ignored.status_code == 200 and ignored.content == DATA
    assert "content-range" not in ignored.headers
    assert honoured.status_code == 206 and honoured.content == DATA[100:]


def test_fault_html_fallback(origin: Origin) -> None:
    put(origin, "m/model.json", b"{}")
    origin.fault_html_fallback("m/*")
    with httpx.Client() as client:
        fake = client.get(origin.url_for("m/group1-shard1of2.bin"))
        real = client.get(origin.url_for("m/model.json"))
        outside = client.get(origin.url_for("other/x.bin"))
    assert fake.status_code == 200
    assert fake.headers["content-type"].startswith("text/html")
    assert fake.content.startswith(b"<!doctype html>")
    assert real.content == b"{}"
    assert outside.status_code == 404


def test_fault_drip_sends_slowly(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drip("a.bin", chunk=7, interval=30)
    with httpx.Client() as client, client.stream("GET", origin.url_for("a.bin")) as r:
        first = next(r.iter_raw())
        sent = origin.bytes_sent("a.bin")
    assert first == DATA[:7]
    assert sent == 7  # the next chunk is counted only after the 30 s pause


def test_fault_drip_delivers_everything(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drip("a.bin", chunk=2048, interval=0.001)
    with httpx.Client() as client:
        r = client.get(origin.url_for("a.bin"))
    assert r.content == DATA
    assert origin.bytes_sent() == len(DATA)


def test_fault_drip_headers_sends_the_head_a_byte_at_a_time(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drip_headers("a.bin", interval=30)
    with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as sock:
        sock.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(1024)
    assert first == b"H"  # the next byte comes only after the 30 s pause
    assert origin.bytes_sent("a.bin") == 0


def test_fault_drip_headers_then_delivers_the_whole_answer(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drip_headers("a.bin", interval=0.001, times=1)
    with httpx.Client() as client:
        dripped = client.get(origin.url_for("a.bin"))
        plain = client.get(origin.url_for("a.bin"))
    assert dripped.status_code == 200 and dripped.content == DATA
    assert dripped.headers["etag"] == plain.headers["etag"]


def test_fault_endless_without_length(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_endless("a.bin", times=1)
    got = bytearray()
    with httpx.Client() as client:
        with client.stream("GET", origin.url_for("a.bin")) as r:
            assert "content-length" not in r.headers
            for chunk in r.iter_raw():
                got += chunk
                if len(got) > 5 * len(DATA):
                    break
        after = client.get(origin.url_for("a.bin"))
    assert got[:2 * len(DATA)] == DATA * 2
    assert after.status_code == 200 and after.content == DATA


def test_fault_endless_with_a_lying_length(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_endless("a.bin", content_length=1 << 30)
    out = curl("--max-time", "30", "-o", "/dev/null", "-r", "0-", "--max-filesize", "100",
               origin.url_for("a.bin"))
    assert out.returncode == 63  # CURLE_FILESIZE_EXCEEDED: curl believed the header
    with httpx.Client() as client, client.stream("GET", origin.url_for("a.bin")) as r:
        assert r.headers["content-length"] == str(1 << 30)
        n = 0
        for chunk in r.iter_raw():
            n += len(chunk)
            if n > 3 * len(DATA):
                break
    assert n > 3 * len(DATA)


@pytest.mark.parametrize("status", [429, 503])
def test_fault_status_with_retry_after(origin: Origin, status: int) -> None:
    put(origin, "a.bin")
    origin.fault_status("a.bin", status, retry_after=7, times=2)
    with httpx.Client() as client:
        answers = [client.get(origin.url_for("a.bin")) for _ in range(3)]
    assert [a.status_code for a in answers] == [status, status, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert answers[2].content == DATA


def test_fault_status_without_retry_after_and_for_missing_files(origin: Origin) -> None:
    origin.fault_status("*", 503, retry_after=None)
    with httpx.Client() as client:
        r = client.get(origin.url_for("not-there.bin"))
        r2 = client.get(origin.url_for("not-there.bin"))
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert r2.status_code == 404  # times defaults to 1


def test_fault_bad_content_range(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_bad_content_range("a.bin", shift=-50, times=1)
    with httpx.Client() as client:
        bad = client.get(origin.url_for("a.bin"), headers={"Range": "bytes=100-199"})
        good = client.get(origin.url_for("a.bin"), headers={"Range": "bytes=100-199"})
    assert bad.status_code == 206
    assert bad.headers["content-range"] == f"bytes 50-199/{len(DATA)}"
    assert bad.content == DATA[50:200]
    assert good.headers["content-range"] == f"bytes 100-199/{len(DATA)}"


def test_newest_fault_of_a_kind_wins_and_times_counts_down(origin: Origin) -> None:
    put(origin, "a.bin")
    origin.fault_drop("*", 10)
    origin.fault_drop("a.bin", 20, times=1)
    with httpx.Client() as client:
        first, _ = read_until_error(client, origin.url_for("a.bin"))
        second, _ = read_until_error(client, origin.url_for("a.bin"))
    assert (len(first), len(second)) == (20, 10)


def test_fault_arguments_are_checked(origin: Origin) -> None:
    with pytest.raises(ValueError, match="times"):
        origin.fault_drop("*", 10, times=0)
    with pytest.raises(ValueError, match="200"):
        origin.fault_status("*", 200)
    with pytest.raises(ValueError, match="missing"):
        origin.fault_truncate("*", missing=0)


def test_hung_up_clients_leave_no_tracebacks(tmp_path: Path, capfd) -> None:
    (tmp_path / "a.bin").write_bytes(DATA * 100)
    with Origin(tmp_path) as origin:
        origin.fault_endless("a.bin", times=1)
        origin.fault_drip("b.bin", chunk=1, interval=0.01)
        origin.set_file("b.bin", DATA)
        with httpx.Client() as client:
            with client.stream("GET", origin.url_for("a.bin")) as r:
                next(r.iter_raw())
            with client.stream("GET", origin.url_for("b.bin")) as r:
                next(r.iter_raw())
            with client.stream("GET", origin.url_for("a.bin")) as r:  # sendfile, cut short
                next(r.iter_raw())
        # the server notices the hang-ups on its next writes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and origin.open_connections > 0:
            time.sleep(0.01)
        assert origin.open_connections == 0
    out, err = capfd.readouterr()
    assert err == ""


# -- lifecycle -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["endless", "drip"])
def test_stop_during_a_response_returns_promptly(tmp_path: Path, fault: str) -> None:
    origin = Origin(tmp_path).start()
    origin.set_file("a.bin", DATA)
    if fault == "endless":
        origin.fault_endless("a.bin")
    else:
        origin.fault_drip("a.bin", chunk=1, interval=60)
    errors: list[BaseException] = []
    started, release = threading.Event(), threading.Event()

    def download() -> None:
        try:
            with httpx.Client(timeout=120) as client, \
                    client.stream("GET", origin.url_for("a.bin")) as r:
                for _ in r.iter_raw():
                    started.set()
                    release.wait()  # meanwhile the server blocks in a write, or in its drip
        except BaseException as exc:
            errors.append(exc)
        started.set()

    t = threading.Thread(target=download)
    t.start()
    assert started.wait(10)
    origin.stop()  # returns although the endless body never ends
    assert origin.open_connections == 0  # closed, and reset, before stop() returned
    release.set()
    t.join(10)  # a guard only: just the client's own receive buffer is left to read
    assert not t.is_alive()
    if fault == "drip":
        assert origin.bytes_sent() == 1  # stop() woke the drip out of its 60 s pause
        # it had a Content-Length, so the cut is an error for the client
        assert errors and isinstance(errors[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError), httpx.Client() as client:
        client.get(origin.url_for("a.bin"))


def test_stop_drops_the_body_a_client_has_not_received(tmp_path: Path) -> None:
    """A cut is a reset: the megabytes an endless writer queued in the kernel are dropped,
    not sent behind a FIN for the client to read through (stop() used to leave ~4 MiB here,
    delivered by the orphaned socket whenever the client got round to reading it)."""
    origin = Origin(tmp_path).start()
    origin.set_file("a.bin", DATA)
    origin.fault_endless("a.bin")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # fixed, not autotuned
        sock.settimeout(30)  # a guard only: every read below ends in data, EOF or a reset
        sock.connect(("127.0.0.1", origin.port))
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.sendall(b"GET /a.bin HTTP/1.1\r\nHost: origin\r\n\r\n")
        got = 0
        while got < 1 << 20:  # the body flows; once we stop reading, every buffer fills up
            chunk = sock.recv(1 << 16)
            assert chunk
            got += len(chunk)
        origin.stop()
        after = 0
        try:
            while chunk := sock.recv(1 << 16):
                after += len(chunk)
        except ConnectionResetError:
            pass
    assert origin.open_connections == 0
    # at most what our own receive queue held (rcvbuf is its budget; the kernel may admit
    # one segment past it), not the server's backlog
    assert after <= 2 * rcvbuf


def test_start_twice_is_an_error(tmp_path: Path) -> None:
    with Origin(tmp_path) as origin, pytest.raises(RuntimeError):
        origin.start()


def test_stop_closes_idle_keep_alive_connections(tmp_path: Path) -> None:
    origin = Origin(tmp_path).start()
    origin.set_file("a.bin", DATA)
    with httpx.Client() as client:
        assert client.get(origin.url_for("a.bin")).status_code == 200
        origin.stop()
        with pytest.raises(httpx.TransportError):
            client.get(origin.url_for("a.bin"))


def test_command_line_serves_a_directory(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_bytes(b'{"ok": true}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsync.daemon.demo.origin", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        out = curl("-f", url + "/m/model.json")
        assert out.returncode == 0 and out.stdout == b'{"ok": true}'
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err == b""
