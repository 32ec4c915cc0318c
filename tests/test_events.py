"""The event log on real files: ids across restarts, torn tails, rotation, long-poll wake-ups."""

from __future__ import annotations

import json
import math

import pytest
import trio
import trio.testing

from shardsync.daemon.events import Event, EventBatch, EventLog
from shardsync.store import LockedError, StorageError


def _lines(path):
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_append_and_since(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        a = log.append("check_started", model="bodypix")
        b = log.append("published", model="bodypix", version="3f2a", files=7)
        c = log.append("reloaded")
        assert [a.id, b.id, c.id] == [1, 2, 3]
        assert log.since(0).events == [a, b, c]
        batch = log.since(1)
        assert batch.events == [b, c] and batch.cursor == 3 and not batch.truncated
        assert log.since(3) == EventBatch([], 3, False)
        assert log.since(0, limit=2).events == [a, b]
        assert log.since(0, limit=2).cursor == 2
    on_disk = _lines(path)
    assert on_disk[1] == {"id": 2, "time": b.time, "type": "published", "model": "bodypix",
                          "version": "3f2a", "files": 7}
    assert on_disk[2]["model"] is None


def test_batch_json_shape(tmp_path):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        ev = log.append("failed", model="m", error="HTTP 503")
        body = log.since(0).to_json()
    assert body == {"events": [ev.to_json()], "next": 1, "truncated": False}
    assert Event.from_json(body["events"][0]) == ev


def test_ids_continue_after_reopen(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        for _ in range(3):
            log.append("tick")
    with EventLog.open(path) as log:
        assert log.last_id == 3
        assert log.append("tick").id == 4
        assert [e.id for e in log.since(2).events] == [3, 4]
    assert [e["id"] for e in _lines(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("tail", [b'{"id": 3, "time": 1.0, "ty', b"\0" * 300, b"garbage\n\0\0\n"])
def test_torn_tail_is_dropped_and_truncated(tmp_path, tail):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        log.append("one")
        log.append("two")
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    with EventLog.open(path) as log:
        assert path.read_bytes() == good  # truncated back to the last whole event
        assert log.last_id == 2
        assert log.append("three").id == 3
    assert [e["type"] for e in _lines(path)] == ["one", "two", "three"]


def test_bad_line_inside_is_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":1,"time":1,"type":"a","model":null}\nnot json\n'
                     b'{"id":2,"time":2,"type":"b","model":null}\n')
    with EventLog.open(path) as log:
        assert [e.type for e in log.since(0).events] == ["a", "b"]
        assert log.append("c").id == 3


def test_second_opener_is_locked_out(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path):
        with pytest.raises(LockedError, match="another process"):
            EventLog.open(path)
    EventLog.open(path).close()  # released on close


def test_bad_fields_write_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        log.append("ok")
        with pytest.raises(ValueError, match="id"):
            log.append("x", id=9)
        with pytest.raises(TypeError):
            log.append("x", payload=object())
        with pytest.raises(ValueError):
            log.append("x", ratio=math.nan)
        assert log.append("next").id == 2
    assert [e["type"] for e in _lines(path)] == ["ok", "next"]


def test_rotation_keeps_ids_and_marks_truncated(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path, max_bytes=4096) as log:
        for i in range(200):
            log.append("tick", model="m", n=i)
            assert path.stat().st_size <= 4096
        first = log.first_id
        assert first is not None and first > 1
        assert log.last_id == 200
        # The file holds exactly the kept events, ids untouched.
        assert [e["id"] for e in _lines(path)] == list(range(first, 201))
        old = log.since(5)
        assert old.truncated and old.events[0].id == first
        assert not log.since(first - 1).truncated
        assert log.since(first - 1).events[0].id == first
    with EventLog.open(path, max_bytes=4096) as log:
        assert log.first_id == first and log.append("tick").id == 201
    assert not (tmp_path / "events.jsonl.tmp").exists()


def test_oversized_file_is_rotated_on_open(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog.open(path) as log:
        for _ in range(100):
            log.append("tick", pad="x" * 50)
    with EventLog.open(path, max_bytes=2048) as log:
        assert path.stat().st_size <= 2048
        assert log.last_id == 100 and log.first_id > 1


def test_a_cursor_past_the_end_gets_nothing_and_the_newest_id(tmp_path):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        assert log.since(57) == EventBatch([], 0, False)
        log.append("a")
        assert log.since(57) == EventBatch([], 1, False)  # not the whole log, "truncated"
        assert [e.id for e in log.since(0).events] == [1]


async def test_a_cursor_past_the_end_waits_for_the_next_event(tmp_path, autojump_clock):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        log.append("old")
        got = []

        async def poll():
            got.append(await log.wait_since(57, timeout=math.inf))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # waiting, not answered with the log
            new = log.append("new")
        assert got == [EventBatch([new], 2, False)]
        empty = await log.wait_since(57, timeout=30)
        assert empty == EventBatch([], 2, False)  # at the timeout: nothing, from the newest


def test_bad_arguments(tmp_path):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        with pytest.raises(ValueError):
            log.since(-1)
        with pytest.raises(ValueError):
            log.since(0, limit=0)
    with pytest.raises(ValueError):
        EventLog.open(tmp_path / "e2.jsonl", max_bytes=10)
    log.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        log.append("late")


async def test_wait_since_returns_at_once_when_events_exist(tmp_path, autojump_clock):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        log.append("a")
        start = trio.current_time()
        batch = await log.wait_since(0, timeout=30)
        assert [e.type for e in batch.events] == ["a"]
        assert trio.current_time() == start


async def test_wait_since_wakes_on_append(tmp_path, autojump_clock):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        log.append("before")
        results = []

        async def poll():
            results.append(await log.wait_since(1, timeout=600))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # both are waiting, not spinning
            start = trio.current_time()
            log.append("after", model="m")
        assert trio.current_time() == start  # woken by the append, not by the timeout
        assert [[e.type for e in r.events] for r in results] == [["after"], ["after"]]
        assert results[0].cursor == 2


async def test_wait_since_times_out_empty(tmp_path, autojump_clock):
    with EventLog.open(tmp_path / "events.jsonl") as log:
        log.append("a")
        start = trio.current_time()
        batch = await log.wait_since(1, timeout=25)
        assert batch == EventBatch([], 1, False)
        assert trio.current_time() - start == pytest.approx(25)


async def test_close_wakes_waiters(tmp_path, autojump_clock):
    log = EventLog.open(tmp_path / "events.jsonl")
    async with trio.open_nursery() as nursery:
        results = []

        async def poll():
            results.append(await log.wait_since(0, timeout=600))

        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        log.close()
    assert trio.current_time() == start
    assert results == [EventBatch([], 0, False)]


def test_ids_lost_to_a_power_cut_are_never_handed_out_again(tmp_path):
    """A power cut can lose the unsynced tail of the log. After the reboot (another
    boot id in the reservation file) the next id must come after every id that may
    have been handed out, or a client's cursor would skip the new events."""
    path = tmp_path / "events.jsonl"
    log = EventLog.open(path)
    for i in range(5):
        log.append("checked", model=f"m{i}")
    seen_by_client = log.last_id  # a client polled up to here
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # the last three events never reached the disk
    hwm = tmp_path / "events.jsonl.hwm"
    reserved, _, _ = hwm.read_text().partition(" ")
    hwm.write_text(f"{reserved} another-boot\n")

    log = EventLog.open(path)
    new = log.append("published", model="m9")
    assert new.id > seen_by_client
    assert [e.id for e in log.since(seen_by_client).events] == [new.id]
    log.close()


def test_within_one_boot_ids_go_on_from_the_file(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog.open(path)
    log.append("a")
    log.close()
    log = EventLog.open(path)
    assert log.append("b").id == 2  # the process died, not the kernel: nothing was lost
    log.close()


def plant_symlink(tmp_path, name: str, bait_content: bytes):
    """``state/<name>`` as a symlink to a bait file outside; returns (state, bait)."""
    bait = tmp_path / "outside.txt"
    bait.write_bytes(bait_content)
    state = tmp_path / "state"
    state.mkdir()
    (state / name).symlink_to(bait)
    return state, bait


def test_a_symlink_planted_as_the_log_is_refused_not_followed(tmp_path) -> None:
    state, bait = plant_symlink(tmp_path, "events.jsonl", b"not shardsync's\n")
    with pytest.raises(StorageError) as exc:
        EventLog.open(state / "events.jsonl")
    assert "events.jsonl" in str(exc.value)
    assert bait.read_bytes() == b"not shardsync's\n"


def test_a_symlink_planted_as_the_id_reservation_is_replaced_not_followed(tmp_path) -> None:
    state, bait = plant_symlink(tmp_path, "events.jsonl.hwm", b"999999 some-boot\n")
    with EventLog.open(state / "events.jsonl") as log:
        event = log.append("checked", model="m")
    assert event.id < 999999  # the bait's content was not read as our reservation
    assert bait.read_bytes() == b"999999 some-boot\n"
    assert not (state / "events.jsonl.hwm").is_symlink()
