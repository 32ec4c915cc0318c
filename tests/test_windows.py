"""download_windows (shardsync.daemon.windows): parsing, and which window opens next.

The clock is a parameter here (any hour of any day); the service's own use, against
the wall clock, is tested in test_service_windows.py with windows placed around now.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
from synchelpers import run_cli

from shardsync.daemon.config import load_config
from shardsync.daemon.errors import ConfigError
from shardsync.daemon.windows import DownloadWindows, Window, closed_at, parse_windows

TZ = timezone(timedelta(hours=2))


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hour, minute, 30, tzinfo=TZ)


def test_windows_parse_to_minutes_and_print_as_written() -> None:
    ws = parse_windows(["01:00-05:00", "22:30-06:00", " 9:05 - 24:00 "])
    assert ws == (Window(60, 300), Window(22 * 60 + 30, 360), Window(9 * 60 + 5, 0))
    assert [str(w) for w in ws] == ["01:00-05:00", "22:30-06:00", "09:05-00:00"]
    assert parse_windows([]) == ()


@pytest.mark.parametrize(("value", "reason"), [
    ("01:00-05:00", "must be a list"),
    (["1-5"], "is not a window like"),
    ([5], "is not a window like"),
    (["25:00-05:00"], "hours go from 00 to 23"),
    (["01:60-05:00"], "minutes from 00 to 59"),
    (["01:00-24:01"], "24:00 only as an end"),
    (["03:00-03:00"], "starts where it ends"),
])
def test_bad_windows_say_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_windows(value)


def test_inside_a_window_is_open_its_end_is_not() -> None:
    ws = parse_windows(["01:00-05:00"])
    assert closed_at(ws, at(1, 0)) is None
    assert closed_at(ws, at(4, 59)) is None
    closed = closed_at(ws, at(5, 0))
    assert closed is not None and closed.opens == at(1, day=2).replace(second=0)


def test_a_window_over_midnight_is_open_on_both_sides() -> None:
    ws = parse_windows(["22:00-06:00"])
    assert closed_at(ws, at(23, 59)) is None
    assert closed_at(ws, at(0, 0)) is None
    assert closed_at(ws, at(5, 59)) is None
    closed = closed_at(ws, at(12))
    assert closed is not None and closed.opens == at(22).replace(second=0)  # today


def test_the_next_window_is_the_soonest_to_open() -> None:
    ws = parse_windows(["13:00-14:00", "01:00-05:00"])
    closed = closed_at(ws, at(6))
    assert closed is not None and str(closed.window) == "13:00-14:00"
    assert closed.opens == at(13).replace(second=0)
    closed = closed_at(ws, at(15))
    assert closed is not None and str(closed.window) == "01:00-05:00"
    assert closed.opens == at(1, day=2).replace(second=0)
    assert closed.to_json() == {"window": "01:00-05:00",
                                "next": int(at(1, day=2).replace(second=0).timestamp())}


async def test_a_reload_that_opens_a_window_wakes_the_waiters(autojump_clock: object) -> None:
    now = at(12)
    windows = DownloadWindows(parse_windows(["01:00-05:00"]), clock=lambda: now)
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def wait() -> None:
            await windows.wait_open(lambda c: seen.append(str(c.window)))
            done.set()

        nursery.start_soon(wait)
        await trio.sleep(30)  # far less than the 13 h to the window: still waiting
        assert seen == ["01:00-05:00"] and not done.is_set()
        windows.configure(parse_windows(["11:00-13:00"]))
        with trio.fail_after(1):
            await done.wait()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardsync.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.mark.parametrize(("line", "key", "reason"), [
    ('download_windows = ["1am-5am"]', "download_windows", "is not a window like"),
    ('download_windows = "01:00-05:00"', "download_windows", "must be a list"),
    ('max_rate = "fast"', "max_rate", "'fast' is not a size"),
    ('max_rate = "-1KiB"', "max_rate", "is not a size"),
])
def test_bad_values_are_config_errors_naming_key_and_line(tmp_path: Path, line: str, key: str,
                                                          reason: str) -> None:
    path = write(tmp_path, f"""
        state_dir = "state"
        site_dir = "site"
        {line}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == (key, 3)
    assert reason in str(info.value)


def test_rates_and_windows_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
        max_rate = "4MiB"
        download_windows = ["01:00-05:00", "22:00-06:00"]

        [[origin]]
        prefix = "https://a.example/"
        max_rate = "500KiB"

        [[origin]]
        prefix = "https://b.example/"
        max_rate = "0"
    """)
    cfg = load_config(path)
    assert cfg.max_rate == 4 << 20
    assert [str(w) for w in cfg.download_windows] == ["01:00-05:00", "22:00-06:00"]
    assert [o.max_rate for o in cfg.origins] == [500 << 10, 0]
    assert load_config(write(tmp_path, "max_rate = 0\n")).max_rate == 0
    defaults = load_config(write(tmp_path, ""))
    assert (defaults.max_rate, defaults.download_windows) == (0, ())


def test_a_bad_window_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        state_dir = "state"
        site_dir = "site"
        download_windows = ["01:00-05:00", "22:00-22:00"]

        [[origin]]
        prefix = "https://a.example/"
    """)
    r = run_cli("sync", "-c", path)
    assert r.returncode == 2, r.stderr
    assert f"{path}:3: download_windows: " in r.stderr, r.stderr
    assert "'22:00-22:00' starts where it ends" in r.stderr


def test_a_bad_origin_rate_exits_2_naming_its_block(tmp_path: Path) -> None:
    path = write(tmp_path, """
        state_dir = "state"
        site_dir = "site"

        [[origin]]
        prefix = "https://a.example/"
        max_rate = "1 MB"
    """)
    r = run_cli("sync", "-c", path)
    assert r.returncode == 2, r.stderr
    assert f"{path}:6: origin[1].max_rate: " in r.stderr, r.stderr
