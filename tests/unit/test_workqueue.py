"""The deduplicating work queue: one pass per key at a time, depth reported as keys wait."""

import asyncio
from collections.abc import Hashable

from distillery.controller.workqueue import WorkQueue


async def test_depth_counts_waiting_keys_only_and_is_reported_on_every_change() -> None:
    depths: list[int] = []
    queue = WorkQueue(depths.append)
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[Hashable] = []

    async def handle(key: Hashable) -> None:
        handled.append(key)
        started.set()
        await release.wait()

    queue.add("a")
    queue.add("a")  # already queued: no second entry
    queue.add("b")
    assert queue.depth == 2 and depths == [1, 2]
    worker = asyncio.create_task(queue.worker(handle))
    await started.wait()
    assert handled == ["a"] and queue.depth == 1 and depths[-1] == 1, "the in-flight key is not waiting"
    queue.add("a")  # marked while in flight: runs again afterwards, not concurrently
    assert queue.depth == 1
    started.clear()
    release.set()
    while len(handled) < 3:
        await asyncio.sleep(0)
    worker.cancel()
    assert handled == ["a", "b", "a"] and queue.depth == 0 and depths[-1] == 0
