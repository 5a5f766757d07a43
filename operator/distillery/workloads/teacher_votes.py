"""How several teachers' replies to one row become its label: the vote, and the judge's prompt and verdict.

Pure functions over answers and texts; the labeler asks the teachers and the judge and writes the records.
"""

import re
from collections import Counter
from collections.abc import Sequence

from distillery.workloads.tasks import Message

JUDGE_SYSTEM = "You are a strict and fair judge of replies written by several assistants to the same request."
VERDICT_MARKER = "Best"
_VERDICT = re.compile(rf"^[ \t>*_#]*{VERDICT_MARKER}[ \t]*\**[ \t]*:[ \t]*\**[ \t]*(?:reply[ \t]*)?(\d+)",
                      re.I | re.M)


def plurality(votes: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
    """(the answer most teachers gave, "") from (teacher, answer) pairs, or (None, why) when several answers
    share the most votes."""
    counts = Counter(answer for _, answer in votes)
    ranked = counts.most_common()
    top = ranked[0][1]
    tied = [answer for answer, count in ranked if count == top]
    if len(tied) == 1:
        return tied[0], ""
    sides = "; ".join(f"{answer!r} from {', '.join(t for t, a in votes if a == answer)}" for answer in tied)
    return None, f"teachers tied with {top} vote(s) each: {sides}"


def judge_messages(prompt: Sequence[Message], replies: Sequence[str]) -> list[Message]:
    """The judge sees the request the teachers saw (their system prompt aside) and the numbered replies."""
    request = "\n\n".join(m["content"] for m in prompt if m.get("role") != "system")
    candidates = "\n\n".join(f"Reply {i}:\n{reply.strip()}" for i, reply in enumerate(replies, start=1))
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
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
