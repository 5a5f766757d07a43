"""What evaluation.judge is asked and how its answer is read: the tasks' judge prompts share this frame
(the material in tagged sections, a final `Score: N` line from 0 to 10) and one strict parser."""

import re

from distillery.api.spec import Persona
from distillery.workloads.tasks.base import Message
from distillery.workloads.tasks.persona import persona_system

JUDGE_ROLE = "You are an impartial judge"
"""How every judge system prompt opens (the local teacher server recognises judge requests by it)."""
SCORE_MARKER = "Score"
MAX_SCORE = 10
_SCORE_LINE = re.compile(rf"^{SCORE_MARKER}:[ \t]*(\d+(?:\.\d+)?)[ \t]*$")


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


def persona_judge_messages(persona: Persona, request: str, reply: str) -> list[Message]:
    """The persona rubric: does the reply speak as the persona (name, traits, tone)?"""
    system = (f"{JUDGE_ROLE} of how well an assistant keeps to its persona. Rate only the character: whether "
              f"the reply speaks as the persona would, with its name when it refers to itself, its traits and its "
              f"tone, not whether it is correct. Explain in at most two sentences, then end with a last line "
              f"'{SCORE_MARKER}: N' where N is an integer from 0 (out of character) to {MAX_SCORE} (fully in "
              f"character), and nothing after it.")
    user = "\n\n".join([section("persona", persona_system(persona)), section("request", request),
                        section("reply", reply)])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
