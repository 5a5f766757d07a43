"""teacherStrategy.mode judge: the model that picks the best of several teachers' differing replies to a row.

Not evaluation.judge, which scores the student's replies (`evaluation_judge`). This one sees the request the
teachers saw and their numbered replies, and ends its answer with a verdict line naming one of them.
"""

import re
from collections.abc import Sequence

from distillery.api.pipeline import TeacherClientConfig
from distillery.workloads.openai_client import OpenAIChatClient, TeacherRejected, TeacherUnavailable
from distillery.workloads.tasks import Message

STRATEGY_JUDGE_SYSTEM = ("You are a strict and fair judge of replies written by several assistants to the same "
                         "request.")
VERDICT_MARKER = "Best"
_VERDICT = re.compile(rf"^[ \t>*_#]*{VERDICT_MARKER}[ \t]*\**[ \t]*:[ \t]*\**[ \t]*(?:reply[ \t]*)?(\d+)",
                      re.I | re.M)


class StrategyJudgeUnavailable(Exception):
    """The strategy judge stayed unreachable: the row is left for a rerun."""


def strategy_judge_messages(prompt: Sequence[Message], replies: Sequence[str]) -> list[Message]:
    """The judge sees the request the teachers saw (their system prompt aside) and the numbered replies."""
    request = "\n\n".join(m["content"] for m in prompt if m.get("role") != "system")
    candidates = "\n\n".join(f"Reply {i}:\n{reply.strip()}" for i, reply in enumerate(replies, start=1))
    return [
        {"role": "system", "content": STRATEGY_JUDGE_SYSTEM},
        {"role": "user", "content": (
            f"The request:\n\n{request}\n\nCandidate replies:\n\n{candidates}\n\n"
            f"Which reply answers the request best: correct, complete, faithful to the input and in the "
            f"requested format? Reason briefly, then end with a line '{VERDICT_MARKER}: <number of the reply>'.")},
    ]


def parse_verdict(text: str, candidates: int) -> int | None:
    """The 0-based index of the reply the judge picked (its last verdict line), or None without a valid one."""
    matches = _VERDICT.findall(text)
    if not matches:
        return None
    pick = int(matches[-1])
    return pick - 1 if 1 <= pick <= candidates else None


class StrategyJudge:
    """Asks the strategy judge, up to its maxAttempts times, until it gives a valid verdict line."""

    def __init__(self, cfg: TeacherClientConfig, client: OpenAIChatClient) -> None:
        self.cfg, self.client = cfg, client

    async def pick(self, prompt: Sequence[Message], replies: list[str]) -> tuple[int | None, str, int, int]:
        """(the index of the reply the judge picked or None, why not, tokens in, tokens out); raises
        StrategyJudgeUnavailable when the judge cannot be reached."""
        messages = strategy_judge_messages(prompt, replies)
        tokens_in = tokens_out = 0
        text = ""
        for _ in range(self.cfg.max_attempts):
            try:
                result = await self.client.chat(messages, self.cfg.sampling)
            except TeacherRejected as err:
                return None, f"judge refused: {err}", tokens_in, tokens_out
            except TeacherUnavailable as err:
                raise StrategyJudgeUnavailable(str(err)) from None
            tokens_in, tokens_out = tokens_in + result.tokens_in, tokens_out + result.tokens_out
            text = result.texts[0] if result.texts else ""
            pick = parse_verdict(text, len(replies))
            if pick is not None:
                return pick, "", tokens_in, tokens_out
        return None, f"the judge gave no valid verdict line: {text[-200:]!r}", tokens_in, tokens_out
