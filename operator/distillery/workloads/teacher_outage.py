"""An unreachable teacher (restart, rollout: 5xx, timeouts, refused connections), waited out together by the
workers that ask it, for up to its outage budget."""

import asyncio
import logging
import time

from distillery.api.reports import LabelingReport

log = logging.getLogger("distillery.labeler")

OUTAGE_BACKOFF_BASE_S = 2.0
OUTAGE_BACKOFF_MAX_S = 60.0

outage_sleep = asyncio.sleep
"""How an outage waits between probes of the teacher (tests replace it to restart the teacher meanwhile)."""


class TeacherOutage:
    """The teacher is unreachable: workers wait it out together, bounded by an outage budget.

    One worker at a time waits a backoff step and then retries its row, so a recovering teacher sees
    one probe per step, not one per worker. The first success ends the outage; workers whose request
    failed before that retry at once. Backoff doubles up to OUTAGE_BACKOFF_MAX_S.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.since: float | None = None
        self.steps = 0
        self.generation = 0
        """Outages ended so far; a worker compares it with the value seen before its request."""
        self.exhausted = False
        self.lock = asyncio.Lock()
        self.since_wall: float | None = None
        self.error = ""

    def report(self, progress: LabelingReport) -> bool:
        """While the teacher is unreachable, sets on the live progress report since when (Unix time) and why;
        whether it is unreachable."""
        if self.since_wall is None:
            return False
        progress.teacher_unreachable_since, progress.teacher_error = int(self.since_wall), self.error[:200]
        return True

    def ended(self) -> None:
        if self.since is not None:
            log.info("the teacher answers again after %.0f s", time.monotonic() - self.since)
            self.since, self.steps = None, 0
            self.since_wall, self.error = None, ""
            self.generation += 1

    async def wait(self, generation: int, error: str) -> bool:
        """After a failed request begun at `generation`: True to retry the row, False once over budget."""
        async with self.lock:
            if self.exhausted:
                return False
            if generation != self.generation:
                return True
            now = time.monotonic()
            if self.since is None:
                self.since, self.since_wall, self.error = now, time.time(), error
                log.warning("the teacher is unreachable (%s); waiting up to %.0f s for it", error, self.budget_s)
            left = self.since + self.budget_s - now
            if left <= 0:
                self.exhausted = True
                log.error("the teacher stayed unreachable for %.0f s, teacher.outageBudgetSeconds", self.budget_s)
                return False
            step = min(OUTAGE_BACKOFF_MAX_S, OUTAGE_BACKOFF_BASE_S * 2 ** self.steps)
            self.steps += 1
            await outage_sleep(min(step, left))
            return True
