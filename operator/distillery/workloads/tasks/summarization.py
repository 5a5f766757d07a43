"""Summarization, optionally by chain of density (Adams et al., 2023): keep the last, densest summary."""

import json
import re
from collections.abc import Sequence
from typing import Any

from distillery.workloads.evaluation_judge import judge_system, section
from distillery.workloads.tasks.base import (
    MalformedAnswer,
    Message,
    Parsed,
    Row,
    Score,
    SingleTurnTask,
    check_lengths,
    split_on_last_marker,
)
from distillery.workloads.tasks.metrics import rouge

SUMMARY_MARKER = "Summary"
COD_KEY = "denser_summary"
COD_MISSING_KEY = "missing_entities"

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def find_json_list(text: str) -> list[Any] | None:
    """The JSON list in a model's output: inside a code fence, or from the first '[' to the last ']'."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            return value
    return None


class SummarizationTask(SingleTurnTask):
    marker = SUMMARY_MARKER
    default_system = "You are an expert editor who writes faithful, concise summaries."

    def body(self, row: Row) -> str:
        return f"Article:\n{self.column(row, 'text', 'document', 'article', 'dialogue')}"

    def teacher_instruction(self) -> str:
        limit = self.prompt.max_summary_words
        if self.prompt.chain_of_density:
            rounds = self.prompt.density_rounds
            return (
                "You will write increasingly concise, entity-dense summaries of the article above. "
                f"Repeat the following two steps {rounds} times.\n"
                "Step 1: identify 1-3 informative entities from the article that are missing from the "
                "previous summary.\n"
                "Step 2: write a new, denser summary of the same length that covers every entity and detail "
                "of the previous summary plus the missing entities.\n"
                f"Every summary has at most {limit} words and must be understandable without the article. "
                f"Answer in JSON only: a list of {rounds} objects with the keys \"{COD_MISSING_KEY}\" and "
                f"\"{COD_KEY}\", the last one being the densest summary."
            )
        reasoning = ("First list the article's key points under 'Key points:'. Then write "
                     if self.prompt.chain_of_thought else "Write ")
        return (f"{reasoning}a faithful summary of at most {limit} words on a final line that starts "
                f"with '{SUMMARY_MARKER}:'.")

    def student_instruction(self) -> str:
        return f"Summarize the article in at most {self.prompt.max_summary_words} words."

    def normalize(self, answer: str, row: Row | None = None) -> str:
        summary = " ".join(answer.split()).strip("*_ ")
        if not summary:
            raise MalformedAnswer("empty summary")
        words = len(summary.split())
        if words > self.prompt.max_summary_words:
            raise MalformedAnswer(f"summary has {words} words, more than {self.prompt.max_summary_words}")
        return summary

    def parse(self, text: str, row: Row | None = None) -> Parsed:
        text = text.strip()
        if not text:
            raise MalformedAnswer("empty output")
        if self.prompt.chain_of_density:
            drafts = self._density_drafts(text)
            if drafts is not None:
                return Parsed(self.normalize(drafts[-1]), "\n".join(drafts[:-1]))
            if text.startswith(("[", "```")):
                raise MalformedAnswer("chain-of-density output is not a complete JSON list")
        split = split_on_last_marker(text, self._marker_re, multiline=True)
        if split is None:
            return Parsed(self.normalize(text))
        rationale, summary = split
        return Parsed(self.normalize(summary), rationale)

    @staticmethod
    def _density_drafts(text: str) -> list[str] | None:
        """The summaries of a chain-of-density JSON answer, or None when the output has no JSON list."""
        steps = find_json_list(text)
        if steps is None:
            return None
        drafts = [str(step.get(COD_KEY, "")).strip() for step in steps if isinstance(step, dict)]
        drafts = [d for d in drafts if d]
        if not drafts:
            raise MalformedAnswer(f"chain-of-density JSON has no {COD_KEY!r}")
        return drafts

    def judge_messages(self, row: Row, reply: str, reference: str) -> list[Message]:
        system = judge_system("summaries",
                              "Judge whether the candidate summary is faithful to the article (no invented or "
                              "contradicted facts), covers its main points and is concise, within "
                              f"{self.prompt.max_summary_words} words.")
        user = "\n\n".join([section("article", self.body(row).removeprefix("Article:\n")),
                             section("reference", reference), section("candidate", reply)])
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def reference(self, row: Row) -> str | None:
        gold = self.optional_column(row, "summary", "reference", "highlights", "abstract")
        if gold is None:
            return None
        return " ".join(str(gold).split()) or None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        check_lengths(predictions, references)
        scores = rouge(predictions, references)
        return Score("rouge_lsum", scores["rougeLsum"], details=scores)
