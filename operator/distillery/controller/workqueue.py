"""A deduplicating work queue: a key marked many times while queued is reconciled once,
and a key marked while it is being reconciled runs again afterwards, never concurrently."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, on_depth: Callable[[int], None] = lambda depth: None,
                 on_wait: Callable[[float], None] = lambda seconds: None) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: dict[K, float] = {}
        """Waiting keys and when each was added."""
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        # Told the depth whenever it changes, so a gauge is current even while every worker is busy, and how
        # long each key waited for a worker (controller-runtime's workqueue_queue_duration_seconds).
        self._on_depth = on_depth
        self._on_wait = on_wait

    @property
    def depth(self) -> int:
        """Keys waiting for a worker; like controller-runtime's workqueue_depth, in-flight keys do not count."""
        return len(self._queued)

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued[key] = time.monotonic()
            self._queue.put_nowait(key)
            self._on_depth(self.depth)

    def add_after(self, key: K, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def worker(self, handle: Callable[[K], Awaitable[None]]) -> None:
        while True:
            key = await self._queue.get()
            self._on_wait(time.monotonic() - self._queued.pop(key))
            self._on_depth(self.depth)
            self._active.add(key)
            try:
                await handle(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)


class Backoff(Generic[K]):
    """Per-key exponential delay for retrying failed passes: `base` doubling up to `cap`, forgotten on
    success. A key that keeps failing is retried ever more rarely instead of every few seconds."""

    def __init__(self, base: float = 1.0, cap: float = 300.0) -> None:
        self.base, self.cap = base, cap
        self._failures: dict[K, int] = {}

    def failed(self, key: K) -> float:
        """Count a failure; returns how long to wait before the next try."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return float(min(self.cap, self.base * 2 ** min(failures, 30)))

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)
