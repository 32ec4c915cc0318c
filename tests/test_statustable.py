"""The status table ``shardsync status`` prints, from status documents written out here."""

from __future__ import annotations

from shardsync.daemon.statustable import format_status_table

STATUS = {
    "service": {"version": "0.1.0", "uptime_s": 5025.3, "config": "/etc/shardsync.toml",
                "pid": 4242},
    "models": [
        {"name": "bodypix", "state": "downloading", "version": "3f2a9c01d2e4ffff",
         "last_check": 999_000.0, "last_success": 992_800.0, "next_check": None,
         "last_error": None,
         "progress": {"bytes_done": 12 * 2**20, "bytes_total": 48 * 2**20,
                      "files_done": 3, "files_total": 12}},
        {"name": "face-api", "state": "error", "version": None, "last_check": 999_990.0,
         "last_success": None, "next_check": 1_000_300.0,
         "last_error": "HTTP 503 from https://example.com/model.json\n" + "x" * 100,
         "progress": {"bytes_done": 0, "bytes_total": 0, "files_done": 0, "files_total": 0}},
    ],
}


def test_status_table():
    table = format_status_table(STATUS, now=1_000_000.0)
    lines = table.splitlines()
    assert lines[0] == "shardsync 0.1.0, pid 4242, up 1h 23m, config /etc/shardsync.toml"
    assert lines[1].split() == ["MODEL", "STATE", "VERSION", "SIGNED", "LAST", "SUCCESS", "NEXT",
                                "CHECK", "PROGRESS", "LAST", "ERROR"]
    assert lines[2].split() == ["bodypix", "downloading", "3f2a9c01d2e4", "-", "2h", "0m", "ago",
                                "-", "25%", "12.0", "MiB/48.0", "MiB,", "3/12", "files", "-"]
    assert lines[3].split()[:7] == ["face-api", "error", "-", "-", "-", "in", "5m"]
    assert lines[3].endswith("...") and "\n" not in lines[3] and len(lines[3].split("-", 1)) == 2
    # Columns line up: every row has "STATE" values starting at the same offset.
    col = lines[1].index("STATE")
    assert lines[2][col:].startswith("downloading") and lines[3][col:].startswith("error")
    assert table.endswith("\n")


def test_status_table_without_models_or_fields():
    assert format_status_table({"service": {"version": "0.1.0"}, "models": []}) == (
        "shardsync 0.1.0\nno models configured\n")
    sparse = format_status_table({"models": [{"name": "m"}]}, now=0)
    assert sparse.splitlines()[2].split() == ["m", "-", "-", "-", "-", "-", "-", "-"]


def test_a_model_waiting_for_a_download_slot_shows_queued_with_its_progress():
    queued = {"name": "big", "state": "queued", "version": None, "last_check": 999_990.0,
              "progress": {"bytes_done": 0, "bytes_total": 160 * 2**20, "files_done": 0,
                           "files_total": 40}}
    row = format_status_table({"models": [queued]}, now=1_000_000.0).splitlines()[2]
    assert row.split() == ["big", "queued", "-", "-", "-", "-", "0%", "0", "B/160.0", "MiB,",
                           "0/40", "files", "-"]


def test_a_signed_model_shows_its_signature_version_key_and_expiry():
    signed = {"name": "face", "state": "idle", "version": "3f2a9c01d2e4ffff",
              "signature": {"signed": True, "keyid": "1a2b3c4d5e6f" + "0" * 52, "version": 7,
                            "expires": "2027-03-01T00:00:00Z"}}
    unsigned = {"name": "plain", "state": "idle", "version": "aa",
                "signature": {"signed": False, "keyid": None, "version": None,
                              "expires": None}}
    lines = format_status_table({"models": [signed, unsigned]}, now=0).splitlines()
    col = lines[1].index("SIGNED")
    assert lines[2][col:].startswith("v7 key 1a2b3c4d until 2027-03-01  ")
    assert lines[3][col:].startswith("- ")


def test_pinned_models_are_marked_and_say_what_they_hold_back_under_the_table():
    pinned = {"version": "3f2a9c01d2e4ffff", "since": 999_700.0, "waiting": "9c01d2e43f2a0000"}
    models = [{**STATUS["models"][0], "pinned": pinned},
              {**STATUS["models"][0], "name": "quiet", "pinned": {**pinned, "waiting": None}},
              {**STATUS["models"][1], "pinned": None}]
    lines = format_status_table({**STATUS, "models": models}, now=1_000_000.0).splitlines()
    assert lines[2].split()[:4] == ["bodypix", "downloading", "3f2a9c01d2e4", "pinned"]
    assert lines[4].split()[2] == "-"  # face-api: not pinned, no version
    assert lines[5:] == [
        "pinned: bodypix at 3f2a9c01d2e4 since 5m ago; 9c01d2e43f2a waiting "
        "(unpin to publish it)",
        "pinned: quiet at 3f2a9c01d2e4 since 5m ago; nothing newer seen"]


def test_a_model_served_by_a_mirror_says_which_under_the_table():
    by_mirror = {"name": "face", "state": "idle", "version": "3f2a9c01d2e4ffff",
                 "url": "https://origin/face/model.json", "source": "file:///usb/face/model.json"}
    by_url = {"name": "plain", "state": "idle", "version": "aa",
              "url": "https://origin/plain/model.json",
              "source": "https://origin/plain/model.json"}
    lines = format_status_table({"models": [by_mirror, by_url]}, now=0).splitlines()
    assert lines[-1] == "mirror: face at 3f2a9c01d2e4 served by file:///usb/face/model.json"
    assert len(lines) == 5  # header, columns, two rows, that one line: nothing for "plain"
