"""evaluation.judge: the model that scores the student's (and the teacher's) replies from 0 to 10.

Not teacherStrategy's judge, which picks among teachers' replies while labeling (`strategy_judge`). The tasks'
rubrics (`TaskDefinition.judge_messages`, the persona's in `tasks.persona`) share this frame: the material in
tagged sections and a final `Score: N` line, read by one strict parser. Every prompt is asked concurrently, a
malformed reply asked again up to judge.maxAttempts times, and what stays unscored counted, never guessed.
"""

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from distillery.api.pipeline import JudgeClientConfig
from distillery.api.spec import Sampling
from distillery.workloads.openai_client import OpenAIChatClient, TeacherError

JUDGE_ROLE = "You are an impartial judge"
"""How every judge system prompt opens (the local teacher server recognises judge requests by it)."""
SCORE_MARKER = "Score"
MAX_SCORE = 10
_SCORE_LINE = re.compile(rf"^{SCORE_MARKER}:[ \t]*(\d+(?:\.\d+)?)[ \t]*$")

FIRST_SAMPLING = Sampling(temperature=0.0, max_tokens=512)
RETRY_SAMPLING = Sampling(temperature=0.7, max_tokens=512)
"""A greedy judge repeats a malformed reply to the same prompt; a retry samples."""


class MalformedJudgement(ValueError):
    """The judge's reply has no valid final score line."""


def judge_system(what: str, criteria: str) -> str:
    return (f"{JUDGE_ROLE} of {what}. {criteria} Compare the candidate with the reference, which is a good answer "
            f"but not the only one. Explain your judgement in at most three sentences, then end with a last line "
            f"'{SCORE_MARKER}: N' where N is an integer from 0 (useless) to {MAX_SCORE} (as good as the "
            f"reference or better), and nothing after it.")


def section(tag: str, text: str) -> str:
    return f"<{tag}>\n{text.strip()}\n</{tag}>"


def parse_score(text: str) -> float:
    """The score on the reply's last non-empty line, strictly `Score: N` with 0 <= N <= 10; anything else
    (a score mid-text, '7/10', a missing line, a number out of range) is malformed, since a guessed score
    would move the mean without anyone noticing."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    match = _SCORE_LINE.match(lines[-1]) if lines else None
    if match is None:
        raise MalformedJudgement(f"no final '{SCORE_MARKER}: N' line")
    value = float(match.group(1))
    if value > MAX_SCORE:
        raise MalformedJudgement(f"score {value:g} is above {MAX_SCORE}")
    return value


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


async def _judge_one(client: OpenAIChatClient, messages: Sequence[dict[str, str]], attempts: int,
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


async def _judge_all(cfg: JudgeClientConfig, prompts: Sequence[Sequence[dict[str, str]] | None],
                     tally: JudgeTally) -> list[float | None]:
    semaphore = asyncio.Semaphore(cfg.concurrency)
    # "" rather than None: no key means no Authorization header, not the teacher's key.
    key = os.environ.get(cfg.api_key_env, "")
    async with OpenAIChatClient(cfg.base_url, cfg.model, timeout_s=cfg.request_timeout_seconds,
                                max_attempts=cfg.max_attempts, api_key=key) as client:
        async def one(messages: Sequence[dict[str, str]] | None) -> float | None:
            if messages is None:
                return 0.0  # no reply to judge: the worst score, as a missing answer is a wrong one
            async with semaphore:
                return await _judge_one(client, messages, cfg.max_attempts, tally)

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def judge(cfg: JudgeClientConfig, prompts: Sequence[Sequence[dict[str, str]] | None],
          tally: JudgeTally) -> list[float | None]:
    """One score (0..10) per prompt, None where the judge gave none; a None prompt scores 0 unasked."""
    return asyncio.run(_judge_all(cfg, prompts, tally))


def mean_percent(scores: Sequence[float | None]) -> float | None:
    """The mean of the scored replies on 0..100, None when none was scored."""
    scored = [s for s in scores if s is not None]
    return round(100.0 * sum(scored) / (MAX_SCORE * len(scored)), 2) if scored else None
