"""cancel_and_wait: background loops end even when a cancellation gets swallowed."""

from __future__ import annotations

import asyncio
import sys

import pytest

from cairn_common.tasks import cancel_and_wait


async def _loop_over_wait_for(queue: asyncio.Queue[int], seen: list[int]) -> None:
    while True:
        seen.append(await asyncio.wait_for(queue.get(), 10))


async def test_a_cancel_swallowed_by_wait_for_is_repeated():
    queue: asyncio.Queue[int] = asyncio.Queue()
    seen: list[int] = []
    task = asyncio.create_task(_loop_over_wait_for(queue, seen))
    await asyncio.sleep(0)
    queue.put_nowait(1)  # the item and the cancel arrive together: 3.11 drops the cancel
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    if sys.version_info < (3, 12):  # the bug this guards against: the loop carries on
        assert not task.done() and seen == [1]
    async with asyncio.timeout(5):
        await cancel_and_wait([task, None])
    assert task.cancelled()


async def test_failed_tasks_are_waited_for_and_not_reported_twice():
    async def boom() -> None:
        raise RuntimeError("x")

    async def sleeper() -> None:
        await asyncio.sleep(30)

    tasks = [asyncio.create_task(boom()), asyncio.create_task(sleeper())]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks)
    assert tasks[1].cancelled()
    with pytest.raises(RuntimeError):
        tasks[0].result()
