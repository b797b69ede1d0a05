"""Tests for the ByteBudget: reading stops while too many bytes wait to be settled."""

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
