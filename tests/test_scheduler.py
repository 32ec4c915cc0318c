"""The scheduler: intervals with jitter, capped backoff, wake, apply, the gc gate, stalls.

The scheduling logic runs under trio's autojump MockClock with a small scripted
syncer (it answers like :class:`~shardsync.daemon.sync.Syncer` does, without the
network), so hours of checks take milliseconds and every time is exact. One test
runs a real Syncer against the test origin, on the real clock.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from origin import Origin
from synchelpers import open_syncer, publish_on, tfjs_model

from shardsync.daemon.config import ModelConfig
from shardsync.daemon.errors import UpstreamError
from shardsync.daemon.scheduler import (
    BACKOFF_BASE,
    JITTER,
    Gate,
    ModelState,
    Scheduler,
    backoff,
    jittered,
)
from shardsync.daemon.sync import Progress, SyncResult

# A behaviour of the scripted syncer for one model: "ok", "fail", "hang", "boom" (a bug:
# an exception that is no ShardsyncError), or an async function run as the sync's body.
Behaviour = str | Callable[[ModelConfig, Progress], Awaitable[None]]


class ScriptedSyncer:
    """Stands in for Syncer in pure scheduling tests: records when each model was
    checked (trio time) and answers as ``behaviour[name]`` says (default "ok")."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.calls: list[tuple[str, float]] = []
        self.cancelled: list[str] = []

    def times(self, name: str) -> list[float]:
        return [t for n, t in self.calls if n == name]

    async def sync(self, model: ModelConfig, progress: Progress) -> SyncResult:
        self.calls.append((model.name, trio.current_time()))
        progress.reset("checking")
        how = self.behaviour.get(model.name, "ok")
        try:
            if how == "hang":
                await trio.sleep_forever()
            elif how == "boom":
                raise RuntimeError("a bug in the sync")
            elif how == "fail":
                progress.state = "error"
                return SyncResult(model.name, error=UpstreamError(
                    "HTTP 503", status=503, model=model.name))
            elif callable(how):
                await how(model, progress)
        except trio.Cancelled:
            self.cancelled.append(model.name)
            raise
        progress.state = "idle"
        return SyncResult(model.name, version="v1")


def model(name: str, interval: float = 100.0) -> ModelConfig:
    return ModelConfig(name=name, url=f"http://127.0.0.1:9/{name}/model.json",
                       interval=interval)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@asynccontextmanager
async def running(syncer: object, gate: Gate | None = None,
                  results: list[tuple[str, SyncResult]] | None = None
                  ) -> AsyncIterator[Scheduler]:
    """A started Scheduler over ``syncer``; its tasks are cancelled on exit."""
    def on_result(state: ModelState, result: SyncResult) -> None:
        if results is not None:
            results.append((state.config.name, result))

    async with trio.open_nursery() as nursery:
        scheduler = Scheduler(syncer, gate or Gate(), on_result)  # type: ignore[arg-type]
        await nursery.start(scheduler.run)
        yield scheduler
        nursery.cancel_scope.cancel()


# -- intervals and backoff -----------------------------------------------------------


async def test_checks_at_once_then_every_interval_within_jitter(autojump_clock):
    random.seed(4)
    syncer = ScriptedSyncer()
    start = trio.current_time()
    async with running(syncer) as s:
        s.apply((model("a", 100.0),))
        await trio.sleep(100.0 * 40)
    times = syncer.times("a")
    assert times[0] == start  # a model the service just learned of is checked at once
    g = gaps(times)
    assert len(g) >= 35
    assert all(100 * (1 - JITTER) <= x <= 100 * (1 + JITTER) for x in g), g
    # Jittered both ways, not a fixed offset: a fleet restarted together spreads out.
    assert min(g) < 97 and max(g) > 103, g


async def test_backoff_doubles_from_the_base_and_is_capped_at_the_interval(autojump_clock):
    random.seed(5)
    syncer = ScriptedSyncer()
    syncer.behaviour["a"] = "fail"
    results: list[tuple[str, SyncResult]] = []
    async with running(syncer, results=results) as s:
        s.apply((model("a", 1000.0),))
        await trio.sleep(5000)
        st = s.models["a"]
        assert st.last_success is None and st.failures == st.errors_total == len(results)
        assert "HTTP 503" in (st.last_error or "")
        assert all(not r.ok for _, r in results)
        # Healed: the next check succeeds and the normal interval is back.
        syncer.behaviour["a"] = "ok"
        healed_from = len(syncer.times("a"))
        await trio.sleep(3000)
        assert st.failures == 0 and st.last_error is None and st.last_success is not None
    g = gaps(syncer.times("a"))
    expected = [min(1000.0, BACKOFF_BASE * 2 ** i) for i in range(healed_from - 1)]
    assert expected[:8] == [10, 20, 40, 80, 160, 320, 640, 1000]
    for got, want in zip(g, expected, strict=False):
        assert want * (1 - JITTER) <= got <= want * (1 + JITTER), (g, expected)
    after = g[healed_from:]  # the gaps after the first successful check
    assert after and all(900 <= x <= 1100 for x in after), after


def test_backoff_never_overflows_after_weeks_of_failures():
    # 2 ** 1100 does not fit a float: an unbounded exponent raised OverflowError here,
    # killing the service after ~3 weeks of a model failing every half hour.
    assert backoff(1100, 1800.0) == 1800.0
    assert backoff(1, 1800.0) == BACKOFF_BASE
    assert backoff(3, 25.0) == 25.0  # 40 s capped at the interval


async def test_a_failing_or_hung_model_does_not_stall_another(autojump_clock):
    random.seed(6)
    syncer = ScriptedSyncer()
    syncer.behaviour.update(hung="hang", failing="fail", buggy="boom")
    results: list[tuple[str, SyncResult]] = []
    async with running(syncer, results=results) as s:
        s.apply((model("hung"), model("failing"), model("buggy"), model("fine", 50.0)))
        await trio.sleep(1000)
        assert s.models["hung"].progress.state == "checking"  # still in its first sync
        buggy = s.models["buggy"]
        assert buggy.failures >= 3 and "internal error: RuntimeError" in (buggy.last_error or "")
    assert len(syncer.times("hung")) == 1
    assert len(syncer.times("failing")) >= 4
    assert len(syncer.times("fine")) >= 18  # every ~50 s for 1000 s, undisturbed
    assert all(r.ok for n, r in results if n == "fine")
    assert any(n == "buggy" and not r.ok for n, r in results)  # reported, not raised


# -- wake and apply ------------------------------------------------------------------------


async def test_wake_checks_at_once_one_model_or_all(autojump_clock):
    syncer = ScriptedSyncer()
    async with running(syncer) as s:
        s.apply((model("a", 1000.0), model("b", 1000.0)))
        await trio.sleep(10)
        t = trio.current_time()
        assert s.wake("a") == ["a"]
        await trio.testing.wait_all_tasks_blocked()
        assert syncer.times("a")[-1] == t and len(syncer.times("b")) == 1
        await trio.sleep(10)
        t = trio.current_time()
        assert sorted(s.wake()) == ["a", "b"]
        await trio.testing.wait_all_tasks_blocked()
        assert syncer.times("a")[-1] == syncer.times("b")[-1] == t
        assert len(syncer.times("a")) == 3 and len(syncer.times("b")) == 2


async def test_a_wake_during_a_sync_checks_again_right_after_it(autojump_clock):
    release = trio.Event()

    async def slow(model: ModelConfig, progress: Progress) -> None:
        await release.wait()

    syncer = ScriptedSyncer()
    syncer.behaviour["a"] = slow
    async with running(syncer) as s:
        s.apply((model("a", 1000.0),))
        await trio.sleep(5)
        s.wake("a")  # while the first check is still running
        syncer.behaviour["a"] = "ok"
        await trio.sleep(5)
        t = trio.current_time()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
    assert syncer.times("a") == [syncer.times("a")[0], t]


async def test_apply_adds_removes_and_restarts_changed_models(autojump_clock):
    syncer = ScriptedSyncer()
    syncer.behaviour["c"] = "hang"
    async with running(syncer) as s:
        assert s.apply((model("a"), model("b"))) == (["a", "b"], [], [])
        await trio.sleep(30)
        a_state = s.models["a"]
        t = trio.current_time()
        added, removed, changed = s.apply((model("a"), model("b", 200.0), model("c")))
        assert (added, removed, changed) == (["c"], [], ["b"])
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["a"] is a_state  # unchanged: undisturbed, no extra check
        assert syncer.times("a") == [syncer.times("a")[0]]
        assert syncer.times("b")[-1] == t and len(syncer.times("b")) == 2  # restarted at once
        assert s.models["b"].config.interval == 200.0
        assert syncer.times("c") == [t]  # added: checked at once (and hangs)
        assert s.models["c"].progress.state == "checking"

        assert s.apply((model("a"),)) == ([], ["b", "c"], [])
        await trio.testing.wait_all_tasks_blocked()
        assert set(s.models) == {"a"}
        assert syncer.cancelled == ["c"]  # the sync in progress was cancelled
        assert s.apply((model("a"),)) == ([], [], [])
        await trio.sleep(50)
    assert len(syncer.times("b")) == 2 and len(syncer.times("c")) == 1  # stopped for good


# -- the gc gate ---------------------------------------------------------------------------


async def test_gc_waits_for_running_syncs_and_holds_new_ones_back(autojump_clock):
    release_sync, release_gc = trio.Event(), trio.Event()
    log: list[str] = []

    async def slow(model: ModelConfig, progress: Progress) -> None:
        log.append("sync a starts")
        await release_sync.wait()
        log.append("sync a ends")

    gate = Gate()
    syncer = ScriptedSyncer()
    syncer.behaviour["a"] = slow

    async def gc() -> None:
        async with gate.collecting():
            log.append("gc starts")
            await release_gc.wait()
            log.append("gc ends")

    async with running(syncer, gate) as s, trio.open_nursery() as nursery:
        s.apply((model("a", 1000.0), model("b", 1000.0)))
        await trio.testing.wait_all_tasks_blocked()
        assert gate.syncs == 1  # b's check is done, a's is running
        nursery.start_soon(gc)
        await trio.sleep(10)
        assert gate.collecting_now and "gc starts" not in log  # waits for a
        s.wake("b")
        await trio.sleep(10)
        assert len(syncer.times("b")) == 1  # a gc waiting already holds new syncs back
        release_sync.set()
        await trio.sleep(10)
        assert log == ["sync a starts", "sync a ends", "gc starts"]
        assert len(syncer.times("b")) == 1  # and so does a gc running
        release_gc.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "gc ends" and len(syncer.times("b")) == 2
        assert gate.syncs == 0 and not gate.collecting_now


async def test_cancelled_gc_leaves_the_gate_open(autojump_clock):
    gate = Gate()
    inside = trio.Event()
    release = trio.Event()

    async def sync() -> None:
        async with gate.syncing():
            inside.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync)
        await inside.wait()
        with trio.move_on_after(5):  # gives up while waiting for the sync
            async with gate.collecting():
                raise AssertionError("gc entered while a sync was inside")
        assert not gate.collecting_now
        async with gate.syncing():  # a new sync is not held back by the gc that left
            assert gate.syncs == 2
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.syncs == 0
        with trio.CancelScope() as scope:  # cancelled inside: leaves too
            async with gate.collecting():
                scope.cancel()
                await trio.sleep(1)
        assert scope.cancelled_caught and not gate.collecting_now
        with trio.fail_after(1):
            async with gate.syncing():
                pass


# -- stalls (the watchdog's health check) ----------------------------------------------------


async def test_stalled_names_syncs_that_stopped_moving(autojump_clock):
    async def stuck(model: ModelConfig, progress: Progress) -> None:
        progress.state = "downloading"
        progress.received = 1000
        await trio.sleep_forever()

    async def moving(model: ModelConfig, progress: Progress) -> None:
        progress.state = "downloading"
        while progress.received < 20:
            await trio.sleep(10)
            progress.received += 1

    syncer = ScriptedSyncer()
    syncer.behaviour.update(stuck=stuck, moving=moving)
    async with running(syncer) as s:
        s.apply((model("stuck"), model("moving", 10_000.0), model("idle", 10_000.0)))
        # While "moving" moves, "stuck" may be waiting for a download slot "moving" holds:
        # the scheduler makes progress, no stall (else systemd would restart a service
        # in the middle of long downloads).
        for _ in range(12):  # the watchdog samples every 15 s
            assert s.stalled(60.0) == []
            await trio.sleep(15)
        assert s.models["moving"].progress.state == "downloading"
        await trio.sleep(30)  # "moving" is done at 200 s
        # Now nothing busy moves, and "stuck" has not moved for 210 s.
        assert s.models["moving"].progress.state == "idle"
        assert s.stalled(60.0) == ["stuck"]
        assert s.models["idle"].progress.state == "idle"  # waiting is not a stall


# -- a real Syncer on a real origin (real clock) ------------------------------------------------


async def test_real_syncer_one_model_failing_the_other_published(origin: Origin,
                                                                 tmp_path: Path):
    good = tfjs_model("graph-model", [{"g.bin": b"\x01" * 4096}], tag="good")
    good_url = publish_on(origin, "good", good)
    missing_url = origin.url_for("missing/model.json")  # 404
    results: dict[str, SyncResult] = {}
    both = trio.Event()

    async with open_syncer(tmp_path) as env, trio.open_nursery() as nursery:
        def on_result(state: ModelState, result: SyncResult) -> None:
            results.setdefault(state.config.name, result)
            if len(results) == 2:
                both.set()

        s = Scheduler(env.syncer, Gate(), on_result)
        await nursery.start(s.run)
        s.apply((ModelConfig("good", good_url, 3600.0), ModelConfig("gone", missing_url, 3600.0)))
        with trio.fail_after(60):
            await both.wait()
        good_state, gone_state = s.models["good"], s.models["gone"]
        assert results["good"].ok and results["good"].changed
        assert env.store.versions.current("good") == results["good"].version
        assert not results["gone"].ok and "404" in str(results["gone"].error)
        assert gone_state.failures == 1 and gone_state.progress.state == "error"
        # The failure retries in BACKOFF_BASE (±10 %); the success waits the interval.
        assert good_state.next_check is not None and gone_state.next_check is not None
        assert gone_state.last_check is not None and good_state.last_check is not None
        assert gone_state.next_check - gone_state.last_check < BACKOFF_BASE * 1.2
        assert good_state.next_check - good_state.last_check > 3600 * 0.8
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("failures", [1, 2, 6, 50])
def test_backoff_is_jittered_around_its_value(failures):
    random.seed(failures)
    value = backoff(failures, 600.0)
    samples = [jittered(value) for _ in range(200)]
    assert all(value * 0.9 <= x <= value * 1.1 for x in samples)
    assert max(samples) - min(samples) > value * 0.1
