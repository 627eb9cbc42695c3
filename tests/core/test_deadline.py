"""app/aio/deadline.py: asyncio.timeout's rules on a loop the caller holds."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.aio.deadline import Deadline


async def test_work_past_the_deadline_is_cancelled_and_leaves_as_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, 0.05):
            await asyncio.sleep(10)
    assert time.monotonic() - started < 2
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its own cancellation was taken back


async def test_work_within_the_deadline_keeps_its_result_and_disarms_the_timer() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, 5) as deadline:
        await asyncio.sleep(0)
        value = 42
    assert value == 42
    assert deadline._handle is None
    await asyncio.sleep(0.01)  # nothing fires later


async def test_an_error_inside_passes_through_unchanged() -> None:
    with pytest.raises(KeyError):
        async with Deadline(asyncio.get_running_loop(), 5):
            raise KeyError("x")


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def work() -> None:
        async with Deadline(loop, 5):
            entered.set()
            await asyncio.sleep(10)

    task = loop.create_task(work())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_cancellation_from_elsewhere_at_the_deadline_is_not_swallowed() -> None:
    # Both in the same loop turn: the other cancellation is still pending once the deadline's own is
    # taken back, so the work leaves cancelled, as under asyncio.timeout.
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    deadlines: list[Deadline] = []
    outcome: list[str] = []

    async def work() -> None:
        try:
            async with Deadline(loop, 5) as deadline:
                deadlines.append(deadline)
                entered.set()
                await asyncio.sleep(10)
        except TimeoutError:
            outcome.append("timeout")
            raise
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    task = loop.create_task(work())
    await asyncio.wait_for(entered.wait(), 5)
    deadlines[0]._expire()  # the deadline's timer, run now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert outcome == ["cancelled"]


async def test_nested_in_asyncio_timeout_the_inner_deadline_fires_first() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            async with Deadline(loop, 0.02):
                await asyncio.sleep(10)
