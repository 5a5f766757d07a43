"""Multi-turn chat: the teacher writes the next assistant reply; scored by token F1 against the reference reply."""

from collections.abc import Sequence
from typing import Any

from distillery.workloads.evaluation_judge import judge_system, section
from distillery.workloads.tasks.base import (
    MalformedAnswer,
    Message,
    MissingColumn,
    Parsed,
    Row,
    Score,
    TaskDefinition,
    check_lengths,
    split_on_last_marker,
)
from distillery.workloads.tasks.metrics import mean_percent, token_f1
from distillery.workloads.tasks.persona import with_persona

REPLY_MARKER = "Reply"

# ShareGPT-style datasets say human/gpt; OpenAI-style say user/assistant.
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}


def normalize_turns(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise MissingColumn("messages column must be a non-empty list of {role, content} turns")
    turns = []
    for turn in value:
        if not isinstance(turn, dict):
            raise MissingColumn(f"a conversation turn must be a mapping, got {type(turn).__name__}")
        role = _ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        if role is None:
            raise MissingColumn(f"unknown conversation role in {turn!r:.80}")
        turns.append({"role": role, "content": str(turn.get("content", turn.get("value", "")))})
    return turns


class ConversationTask(TaskDefinition):
    marker = REPLY_MARKER
    default_system = "You are a helpful, honest and harmless assistant."

    def turns(self, row: Row) -> tuple[list[Message], list[Message]]:
        """(history up to and including the last user turn, the turns after it)."""
        turns = normalize_turns(self.column(row, "messages", "conversations", "conversation", "dialog"))
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            raise MissingColumn("conversation has no user turn")
        return turns[: last_user + 1], turns[last_user + 1:]

    def teacher_messages(self, row: Row) -> list[Message]:
        history, _ = self.turns(row)
        system = self.prompt.system_template or self.default_system
        if self.prompt.chain_of_thought:
            system += (" Before replying, think briefly about what the user needs under 'Thoughts:'. "
                       f"Then write your reply to the user after a line that starts with '{REPLY_MARKER}:'.")
        if history[0]["role"] == "system":
            system = f"{system}\n\n{history[0]['content']}"
            history = history[1:]
        return [{"role": "system", "content": with_persona(self.prompt.persona, system) or ""}, *history]

    def student_messages(self, row: Row) -> list[Message]:
        return self.persona_messages(self.turns(row)[0])

    def judge_messages(self, row: Row, reply: str, reference: str) -> list[Message]:
        history, _ = self.turns(row)
        transcript = "\n".join(f"{turn['role']}: {turn['content']}" for turn in history)
        system = judge_system("an assistant's next reply in a conversation",
                              "Judge whether the candidate reply answers the user's last message helpfully, "
                              "correctly and honestly, in a fitting length and register.")
        user = "\n\n".join([section("conversation", transcript), section("reference", reference),
                             section("candidate", reply)])
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def normalize(self, answer: str, row: Row | None = None) -> str:
        reply = answer.strip()
        if not reply:
            raise MalformedAnswer("empty reply")
        return reply

    def parse(self, text: str, row: Row | None = None) -> Parsed:
        split = split_on_last_marker(text, self._marker_re, multiline=True)
        if split is None:
            return Parsed(self.normalize(text))
        rationale, reply = split
        return Parsed(self.normalize(reply), rationale)

    def reference(self, row: Row) -> str | None:
        _, after = self.turns(row)
        if after and after[0]["role"] == "assistant" and after[0]["content"].strip():
            return after[0]["content"].strip()
        gold = self.optional_column(row, "reference", "response", "answer")
        if gold is None:
            return None
        return str(gold).strip() or None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        check_lengths(predictions, references)
        return Score("token_f1", mean_percent(
            [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]))
