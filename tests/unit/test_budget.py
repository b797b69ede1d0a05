"""Tests for the ByteBudget: reading stops while too many bytes wait, and keys share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from shipper.pipeline.budget import ByteBudget
from shipper.telemetry.counters import Telemetry


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def let_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_budget(limit: int) -> tuple[ByteBudget, Telemetry]:
    telemetry = Telemetry()
    return ByteBudget(limit, telemetry), telemetry


async def test_acquire_within_limit_does_not_block() -> None:
    budget, telemetry = make_budget(100)
    await asyncio.wait_for(budget.acquire(40), 1)
    await asyncio.wait_for(budget.acquire(60), 1)  # exactly at the limit
    assert budget.used == 100
    assert telemetry.value("shipper_buffered_bytes") == 100


async def test_acquire_blocks_over_limit_and_resumes_on_release() -> None:
    budget, telemetry = make_budget(100)
    await budget.acquire(70)
    waiter = asyncio.create_task(budget.acquire(40))
    await let_run()
    assert not waiter.done()
    assert budget.used == 70
    budget.release(20)  # 50 + 40 = 90 fits
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 90
    assert telemetry.value("shipper_buffered_bytes") == 90


async def test_a_release_that_frees_too_little_keeps_the_waiter_waiting() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(90)
    waiter = asyncio.create_task(budget.acquire(50))
    await let_run()
    budget.release(10)  # 80 + 50 > 100
    await let_run()
    assert not waiter.done()
    budget.release(30)  # 50 + 50 fits
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 100


async def test_one_release_wakes_every_waiter_that_fits() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(100)
    waiters = [asyncio.create_task(budget.acquire(30)) for _ in range(4)]
    await let_run()
    assert not any(w.done() for w in waiters)
    budget.release(100)
    await wait_until(lambda: sum(w.done() for w in waiters) == 3, "three waiters to fit")
    await let_run()
    assert sum(w.done() for w in waiters) == 3  # the fourth would make 120
    assert budget.used == 90
    budget.release(30)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert budget.used == 90


async def test_single_oversize_acquire_passes_when_nothing_is_held() -> None:
    budget, telemetry = make_budget(100)
    await asyncio.wait_for(budget.acquire(500), 1)
    assert budget.used == 500
    assert telemetry.value("shipper_buffered_bytes") == 500
    small = asyncio.create_task(budget.acquire(1))
    await let_run()
    assert not small.done()  # over the limit: everything else waits
    budget.release(500)
    await asyncio.wait_for(small, 1)
    assert budget.used == 1


async def test_oversize_acquire_waits_until_everything_is_released() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(10)
    await budget.acquire(10)
    big = asyncio.create_task(budget.acquire(500))
    await let_run()
    budget.release(10)
    await let_run()
    assert not big.done()
    budget.release(10)
    await asyncio.wait_for(big, 1)
    assert budget.used == 500


async def test_buffered_bytes_gauge_tracks_acquire_and_release() -> None:
    budget, telemetry = make_budget(1000)
    seen = []
    for size in (100, 250, 5):
        await budget.acquire(size)
        seen.append(telemetry.value("shipper_buffered_bytes"))
    for size in (250, 100, 5):
        budget.release(size)
        seen.append(telemetry.value("shipper_buffered_bytes"))
    assert seen == [100, 350, 355, 105, 5, 0]
    assert budget.used == 0


async def test_cancelled_waiter_does_not_take_budget() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(100)
    waiter = asyncio.create_task(budget.acquire(50))
    await let_run()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(100)
    assert budget.used == 0
    await asyncio.wait_for(budget.acquire(100), 1)
    assert budget.used == 100


async def test_cancelled_waiter_is_skipped_by_a_release_before_its_task_runs() -> None:
    """A cancelled waiter's future is cancelled at once, its task cleans up only later."""
    budget, telemetry = make_budget(100)
    await budget.acquire(100, "a")
    waiter = asyncio.create_task(budget.acquire(60, "b"))
    await let_run()
    behind = asyncio.create_task(budget.acquire(60, "c"))
    await let_run()
    waiter.cancel()
    budget.release(100, "a")  # before the cancelled task had a chance to leave the queue
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(behind, 1)  # the cancelled one first in line held nobody back
    assert budget.used == 60
    assert telemetry.value("shipper_buffered_bytes") == 60
    assert budget.held("b") == 0
    budget.release(60, "c")
    await asyncio.wait_for(budget.acquire(100, "a"), 1)  # b no longer counts in the shares


async def test_waiter_granted_then_cancelled_gives_the_bytes_back() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(100, "a")
    waiter = asyncio.create_task(budget.acquire(50, "b"))
    await let_run()
    budget.release(100, "a")  # grants b's 50 ...
    waiter.cancel()  # ... but b is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.used == 0
    assert budget.held("b") == 0


# --- the per-key share ---------------------------------------------------------------------------


async def test_a_lone_key_may_use_the_whole_limit() -> None:
    budget, _ = make_budget(100)
    for _ in range(4):
        await asyncio.wait_for(budget.acquire(25, "noisy"), 1)
    assert budget.held("noisy") == 100


async def test_a_key_over_its_share_waits_while_another_key_is_active() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(60, "noisy")
    await asyncio.wait_for(budget.acquire(10, "quiet"), 1)  # two active keys: shares of 50
    more = asyncio.create_task(budget.acquire(20, "noisy"))
    await let_run()
    assert not more.done()  # 90 would fit the limit, but not noisy's share
    budget.release(10, "quiet")  # quiet holds nothing and waits for nothing: noisy is alone
    await asyncio.wait_for(more, 1)
    assert budget.held("noisy") == 80


async def test_a_key_over_its_share_goes_on_once_its_own_releases_bring_it_under() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(30, "noisy")
    await budget.acquire(30, "noisy")
    await budget.acquire(10, "quiet")
    more = asyncio.create_task(budget.acquire(20, "noisy"))
    await let_run()
    assert not more.done()
    budget.release(30, "noisy")  # 30 + 20 fits its share of 50
    await asyncio.wait_for(more, 1)
    assert budget.held("noisy") == 50
    assert budget.held("quiet") == 10


async def test_a_waiting_key_shrinks_the_share_of_the_others_at_once() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(50, "noisy")
    await budget.acquire(40, "other")
    quiet = asyncio.create_task(budget.acquire(20, "quiet"))  # 110: it must wait
    await let_run()
    assert not quiet.done()
    noisy = asyncio.create_task(budget.acquire(5, "noisy"))  # 55 > 100 / 3
    await let_run()
    budget.release(40, "other")  # room for both, but noisy is over its share of 50
    await asyncio.wait_for(quiet, 1)
    await let_run()
    assert not noisy.done()
    budget.release(20, "quiet")  # noisy alone again
    await asyncio.wait_for(noisy, 1)
    assert budget.used == 55


async def test_a_key_holding_nothing_may_take_one_chunk_larger_than_its_share() -> None:
    budget, _ = make_budget(100)
    for key in ("a", "b", "c"):
        await budget.acquire(10, key)
    await asyncio.wait_for(budget.acquire(60, "d"), 1)  # the share is 25, the total fits
    assert budget.used == 90
    second = asyncio.create_task(budget.acquire(5, "d"))
    await let_run()
    assert not second.done()  # d is over its share now
    budget.release(60, "d")
    await asyncio.wait_for(second, 1)


async def test_oversize_acquire_of_one_key_waits_until_every_key_released() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(10, "a")
    await budget.acquire(10, "b")
    big = asyncio.create_task(budget.acquire(500, "c"))
    small = asyncio.create_task(budget.acquire(1, "d"))
    await let_run()
    budget.release(10, "a")
    await let_run()
    assert not big.done()
    assert not small.done()  # it would fit, but must not delay the big one
    budget.release(10, "b")
    await asyncio.wait_for(big, 1)
    assert budget.used == 500
    budget.release(500, "c")
    await asyncio.wait_for(small, 1)


async def test_waiters_of_a_key_over_its_share_let_other_keys_pass() -> None:
    """FIFO would serve noisy first: it asked first."""
    budget, _ = make_budget(100)
    await budget.acquire(100, "noisy")
    noisy = asyncio.create_task(budget.acquire(10, "noisy"))
    await let_run()
    quiet = asyncio.create_task(budget.acquire(10, "quiet"))
    await let_run()
    budget.release(10, "noisy")
    await asyncio.wait_for(quiet, 1)
    await let_run()
    assert not noisy.done()


async def test_waiters_are_served_round_robin_by_key() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(100, "a")
    order: list[str] = []

    async def acquire(key: str, label: str) -> None:
        await budget.acquire(10, key)
        order.append(label)

    tasks = []
    for key, label in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2")]:
        tasks.append(asyncio.create_task(acquire(key, label)))
        await let_run()  # queue them in this order
    tasks.append(asyncio.create_task(acquire("c", "c1")))
    await let_run()
    budget.release(100, "a")
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]  # FIFO by key, one turn each


async def test_a_key_that_may_go_is_not_passed_by_smaller_requests() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(90, "a")
    big = asyncio.create_task(budget.acquire(50, "b"))  # holds nothing: within its share
    await let_run()
    small = asyncio.create_task(budget.acquire(5, "c"))  # would fit, but b came first
    await let_run()
    assert not big.done()
    assert not small.done()
    budget.release(40, "a")
    await asyncio.wait_for(big, 1)
    await let_run()
    assert not small.done()  # 100 held
    budget.release(50, "a")
    await asyncio.wait_for(small, 1)
    assert budget.used == 55


async def test_cancelling_a_waiter_gives_the_other_keys_their_share_back() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(60, "noisy")
    blocked = asyncio.create_task(budget.acquire(50, "quiet"))  # 110: waits, and is active
    await let_run()
    more = asyncio.create_task(budget.acquire(10, "noisy"))  # 70 > 100 / 2
    await let_run()
    assert not more.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await asyncio.wait_for(more, 1)
    assert budget.used == 70
    assert budget.held("quiet") == 0


async def test_zero_bytes_neither_wait_nor_make_a_key_active() -> None:
    budget, _ = make_budget(100)
    await budget.acquire(100, "a")
    await asyncio.wait_for(budget.acquire(0, "b"), 1)
    budget.release(0, "b")
    budget.release(50, "a")
    await asyncio.wait_for(budget.acquire(50, "a"), 1)  # a is alone: its share is the limit
    assert budget.used == 100


async def test_keys_taking_turns_fill_the_whole_limit() -> None:
    """A key may go one chunk over its share, so shares that do not divide evenly waste none."""
    budget, _ = make_budget(100)
    keys = ["a", "b", "c"]  # shares of 33.3
    tasks = [asyncio.create_task(budget.acquire(10, key)) for key in keys * 5]
    await let_run()
    assert budget.used == 100
    assert sorted(budget.held(key) for key in keys) == [30, 30, 40]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert budget.used == 100  # the granted ones are still held
