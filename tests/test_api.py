"""The control API's documents (shardsync.daemon.api), asked of a real ``shardsync run``.

RFC 3339 twins beside every epoch time, and ``/v1/events`` with a cursor past the newest
event: a long-poll for what comes next, never the whole log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from origin import Origin
from servicehelpers import WAIT, NotifySocket, ServiceProcess, short_dir
from storehelpers import tfjs_model
from synchelpers import publish_on, write_config

from shardsync.daemon.api import rfc3339, with_rfc3339
from shardsync.daemon.client import ControlClient

_RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def test_rfc3339_is_utc_to_the_second() -> None:
    assert rfc3339(1718000000.9) == "2024-06-10T06:13:20Z"
    assert rfc3339(None) is None
    assert list(with_rfc3339({"a": 0.0, "b": None, "c": 1}, "a", "b")) == [
        "a", "a_at", "b", "b_at", "c"]


def same_moment(epoch: float | None, text: str | None) -> bool:
    if epoch is None:
        return text is None
    assert text is not None
    parsed = datetime.strptime(text, _RFC3339).replace(tzinfo=UTC).timestamp()
    return parsed == int(epoch)


@pytest.fixture
def running(origin: Origin, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service with one published model."""
    model = tfjs_model("graph-model", [{"group1-shard1of1.bin": b"\x05" * 4096}], tag="a")
    with short_dir() as sockets, NotifySocket(sockets / "notify") as notify:
        config = write_config(tmp_path / "conf", {"a": publish_on(origin, "a", model)},
                              socket=str(sockets / "ctl.sock"))
        with ServiceProcess(config, tmp_path / "service.log", notify=notify) as svc:
            svc.start()
            svc.wait_event("published", model="a")
            yield svc


def test_every_epoch_time_has_an_rfc3339_twin(running: ServiceProcess) -> None:
    svc = running
    svc.wait_status(lambda s: s["models"][0]["state"] == "idle", "a idle")
    m = svc.model("a")
    for key in ("last_check", "last_success", "next_check"):
        assert m[key] is not None and same_moment(m[key], m[key + "_at"]), (key, m)
    (current,) = svc.client.get("/v1/models/a")["versions"]
    assert same_moment(current["since"], current["since_at"]) and current["until_at"] is None
    events = svc.events_since(0)
    assert events and all(same_moment(e["time"], e["time_at"]) for e in events), events


def test_a_cursor_past_the_end_waits_for_the_next_event(running: ServiceProcess) -> None:
    svc = running
    before = svc.last_event_id()
    answers: list[dict[str, Any]] = []

    def poll() -> None:
        with ControlClient(svc.socket, timeout=WAIT + 10) as client:
            answers.append(client.get("/v1/events", since=before + 10**6, timeout=WAIT))

    poller = threading.Thread(target=poll)
    poller.start()
    deadline = time.monotonic() + WAIT
    # Checks until the poll answers: each one appends an event, and the first appended
    # after the poll reached the service ends it (whenever that was).
    while poller.is_alive():
        assert time.monotonic() < deadline, "the long-poll never answered"
        svc.client.post("/v1/models/a/sync")
        poller.join(0.2)
    (answer,) = answers
    assert answer["events"] and not answer["truncated"], answer  # not the whole log
    assert all(e["id"] > before for e in answer["events"]), answer
    assert answer["next"] == answer["events"][-1]["id"]

    # At its timeout: nothing, and the newest id to go on from. (A check woken above may
    # still end meanwhile: its event is then the answer, and the next poll is quiet.)
    svc.wait_status(lambda s: s["models"][0]["state"] == "idle", "a idle")
    for _ in range(5):
        last = svc.last_event_id()
        quiet = svc.client.get("/v1/events", since=last + 10**6, timeout=0.5)
        assert not quiet["truncated"] and all(e["id"] > last for e in quiet["events"])
        if not quiet["events"]:
            break
    assert quiet == {"events": [], "next": last, "truncated": False}
