"""The deduplicating work queue: one pass per key at a time, depth reported as keys wait."""

import asyncio
from collections.abc import Hashable

from distillery.controller.workqueue import Backoff, WorkQueue


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


def test_backoff_doubles_per_key_up_to_the_cap_and_resets_on_success() -> None:
    backoff: Backoff[str] = Backoff(base=1.0, cap=8.0)
    assert [backoff.failed("a") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.failed("b") == 1.0, "each key has its own count"
    backoff.succeeded("a")
    assert backoff.failed("a") == 1.0
