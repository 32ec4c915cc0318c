"""The fair download limiter (shardsync.daemon.fairshare), with trio and nothing else.

Slots go round-robin over the keys waiting, FIFO within a key; a cancelled waiter
leaves its queue; a slot is never leaked, also when a cancel meets a grant; changing
``total_tokens`` hands out slots at once and takes none back.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from shardsync.daemon.fairshare import FairLimiter


async def hold(limiter: FairLimiter, key: str, tag: str, order: list[str],
               release: trio.Event) -> None:
    """Take a slot for ``key``, note ``tag`` in ``order``, hold it until ``release``.

    A waiter never served (a leaked slot) fails the test after a while, not hangs it."""
    with trio.fail_after(10):
        async with limiter.slot(key):
            order.append(tag)
            await release.wait()


async def test_a_freed_slot_goes_to_the_next_key_in_turn_fifo_within_a_key() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        async with limiter.slot("big"):  # held while the queues fill
            for i in range(5):
                nursery.start_soon(hold, limiter, "big", f"big{i}", order, release)
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
            for i in range(2):
                nursery.start_soon(hold, limiter, "small", f"small{i}", order, release)
                await trio.testing.wait_all_tasks_blocked()
            assert limiter.waiting("big") == 5 and limiter.waiting("small") == 2
            assert limiter.in_use == 1
        release.set()
    # FIFO would have served every big one first; here the small ones alternate in.
    assert order == ["big0", "small0", "big1", "small1", "big2", "big3", "big4"]
    assert limiter.in_use == 0 and limiter.waiting() == 0


async def test_a_key_that_arrives_later_waits_behind_the_keys_already_in_line() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        async with limiter.slot("x"):
            for key in ("a", "a", "b", "c", "c"):
                nursery.start_soon(hold, limiter, key, key, order, release)
                await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == ["a", "b", "c", "a", "c"]


async def test_slots_up_to_total_are_taken_without_waiting() -> None:
    limiter = FairLimiter(3)
    async with limiter.slot("a"), limiter.slot("a"), limiter.slot("b"):
        assert limiter.in_use == 3 and limiter.waiting() == 0
    assert limiter.in_use == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_is_served() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    release = trio.Event()
    doomed = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        async with limiter.slot("holder"):
            nursery.start_soon(_in_scope, doomed, hold(limiter, "a", "a", order, release))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, limiter, "b", "b", order, release)
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.waiting("a") == 1
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.waiting("a") == 0 and limiter.waiting("b") == 1
        release.set()
    assert order == ["b"]
    assert limiter.in_use == 0 and limiter.waiting() == 0


async def test_a_waiter_cancelled_once_its_slot_is_granted_passes_the_slot_on() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    release = trio.Event()
    release.set()
    doomed = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        async with limiter.slot("holder"):
            nursery.start_soon(_in_scope, doomed, hold(limiter, "a", "a", order, release))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, limiter, "b", "b", order, release)
            await trio.testing.wait_all_tasks_blocked()
        # The slot was just handed to "a", which has not run yet: cancel it now. It
        # enters its block and meets the cancel at its first checkpoint there.
        assert limiter.in_use == 1 and limiter.waiting("a") == 0
        doomed.cancel()
    assert order == ["a", "b"]  # the slot reached the next waiter
    assert limiter.in_use == 0 and limiter.waiting() == 0


async def test_a_cancel_inside_the_block_gives_the_slot_back(autojump_clock: object) -> None:
    limiter = FairLimiter(1)
    with trio.move_on_after(1) as scope:
        async with limiter.slot("a"):
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert limiter.in_use == 0
    async with limiter.slot("b"):  # still usable
        assert limiter.in_use == 1


async def test_taking_a_free_slot_is_a_checkpoint_and_a_cancelled_one_takes_none() -> None:
    limiter = FairLimiter(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        async with limiter.slot("a"):
            pytest.fail("a cancelled task got a slot")  # pragma: no cover
    assert limiter.in_use == 0


async def test_raising_total_tokens_serves_waiters_at_once_lowering_takes_none_back() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        async with limiter.slot("x"):
            for key in ("a", "b", "c"):
                nursery.start_soon(hold, limiter, key, key, order, release)
                await trio.testing.wait_all_tasks_blocked()
            limiter.total_tokens = 3
            await trio.testing.wait_all_tasks_blocked()
            # both granted at once; trio runs woken tasks in any order
            assert sorted(order) == ["a", "b"] and limiter.in_use == 3
            limiter.total_tokens = 1
            assert limiter.in_use == 3  # nobody's slot is taken away
        release.set()
    assert order[2] == "c"
    assert limiter.in_use == 0


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                        (True, TypeError)])
def test_total_tokens_must_be_a_positive_int(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="total_tokens"):
        FairLimiter(bad)  # type: ignore[arg-type]
    limiter = FairLimiter(2)
    with pytest.raises(error, match="total_tokens"):
        limiter.total_tokens = bad  # type: ignore[assignment]
    assert limiter.total_tokens == 2


async def _in_scope(scope: trio.CancelScope, work: object) -> None:
    """Run the coroutine ``work`` inside ``scope`` (which a test cancels)."""
    with scope:
        await work  # type: ignore[misc]
