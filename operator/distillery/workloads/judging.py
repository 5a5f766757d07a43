"""evaluation.judge at work: every prompt asked concurrently, each reply's score read strictly, a malformed reply
asked again up to judge.maxAttempts times, and what stays unscored counted, never guessed."""

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

from distillery.api.pipeline import JudgeClientConfig
from distillery.api.spec import Sampling
from distillery.workloads.openai_client import OpenAIChatClient, TeacherError
from distillery.workloads.tasks import Message
from distillery.workloads.tasks.judge import MAX_SCORE, MalformedJudgement, parse_score

FIRST_SAMPLING = Sampling(temperature=0.0, max_tokens=512)
RETRY_SAMPLING = Sampling(temperature=0.7, max_tokens=512)
"""A greedy judge repeats a malformed reply to the same prompt; a retry samples."""


@dataclass
class JudgeTally:
    requests: int = 0
    malformed: int = 0
    """Replies without a valid score line (each retried while attempts remain)."""
    unjudged: int = 0
    """Prompts left without a score: malformed on every attempt, or the request failed for good."""
    last_problem: str = ""

    def summary(self) -> dict[str, int | str]:
        found: dict[str, int | str] = {"requests": self.requests, "malformed": self.malformed,
                                       "unjudged": self.unjudged}
        if self.last_problem:
            found["last_problem"] = self.last_problem[:300]
        return found


async def _judge_one(client: OpenAIChatClient, messages: Sequence[Message], attempts: int,
                     tally: JudgeTally) -> float | None:
    for attempt in range(attempts):
        tally.requests += 1
        try:
            result = await client.chat(messages, FIRST_SAMPLING if attempt == 0 else RETRY_SAMPLING)
        except TeacherError as err:
            # The client already retried transport errors with backoff: this reply stays unscored.
            tally.last_problem = str(err)
            break
        try:
            return parse_score(result.texts[0] if result.texts else "")
        except MalformedJudgement as err:
            tally.malformed += 1
            tally.last_problem = f"malformed judge reply: {err}"
    tally.unjudged += 1
    return None


async def _judge_all(cfg: JudgeClientConfig, prompts: Sequence[Sequence[Message] | None],
                     tally: JudgeTally) -> list[float | None]:
    semaphore = asyncio.Semaphore(cfg.concurrency)
    # "" rather than None: no key means no Authorization header, not the teacher's key.
    key = os.environ.get(cfg.api_key_env, "")
    async with OpenAIChatClient(cfg.base_url, cfg.model, timeout_s=cfg.request_timeout_seconds,
                                max_attempts=cfg.max_attempts, api_key=key) as client:
        async def one(messages: Sequence[Message] | None) -> float | None:
            if messages is None:
                return 0.0  # no reply to judge: the worst score, as a missing answer is a wrong one
            async with semaphore:
                return await _judge_one(client, messages, cfg.max_attempts, tally)

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def judge(cfg: JudgeClientConfig, prompts: Sequence[Sequence[Message] | None],
          tally: JudgeTally) -> list[float | None]:
    """One score (0..10) per prompt, None where the judge gave none; a None prompt scores 0 unasked."""
    return asyncio.run(_judge_all(cfg, prompts, tally))


def mean_percent(scores: Sequence[float | None]) -> float | None:
    """The mean of the scored replies on 0..100, None when none was scored."""
    scored = [s for s in scores if s is not None]
    return round(100.0 * sum(scored) / (MAX_SCORE * len(scored)), 2) if scored else None
