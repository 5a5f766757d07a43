"""What every task shares: parsed answers, scores, column lookup and the answer-line convention.

A task turns a dataset row into two prompts (an elaborate one for the teacher, a
short one for the student), parses model output into an answer, names the gold
answer and scores predictions. The same `parse` is used for the teacher's
chain-of-thought output and for the student's bare answers, so it accepts a
final "Answer: X" line and, failing that, a text that is itself a valid answer.
"""

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillery.api.spec import PromptSpec
from distillery.workloads.tasks.persona import persona_system, with_persona

Message = dict[str, str]
Row = Mapping[str, Any]

ANSWER_MARKER = "Answer"



class MalformedAnswer(ValueError):
    """The model's output has no usable answer; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Parsed:
    answer: str
    rationale: str = ""


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    """Percentage, 0..100."""
    details: dict[str, float] = field(default_factory=dict)
    """Related metrics next to the headline one (ROUGE-1/2/L beside ROUGE-Lsum), 0..100."""


class MissingColumn(KeyError):
    """A row lacks the column a task needs; the message names the column and the mapping key."""

    def __str__(self) -> str:
        return str(self.args[0])


def marker_pattern(marker: str) -> re.Pattern[str]:
    """A line that starts with `marker:` (optionally bold, bulleted, or 'Final'), capturing what follows."""
    return re.compile(
        rf"^[ \t>*_#\-\u2022]*(?:final[ \t]+)?{re.escape(marker)}[ \t]*\**[ \t]*(?::|\uff1a)[ \t]*\**[ \t]*(.*)$",
        re.I | re.M,
    )


def inline_marker_pattern(marker: str) -> re.Pattern[str]:
    """`marker:` or `marker is` inside a line, as a word of its own ("... the final answer is 24."); its end is
    where the answer starts."""
    m = re.escape(marker)
    return re.compile(rf"(?<![a-z])(?:{m}[ \t]*\**[ \t]*(?::|\uff1a)|{m}[ \t]+is\b[ \t]*:?)[ \t]*\**[ \t]*", re.I)


def split_on_last_marker(text: str, pattern: re.Pattern[str], multiline: bool,
                         inline: re.Pattern[str] | None = None) -> tuple[str, str] | None:
    """(rationale, answer) around the last marker line, or None when there is none.

    `multiline` keeps everything after the marker (summaries, replies); otherwise only the marker's own line is
    the answer. With `inline`, a marker inside the last line counts when no line starts with one: real models
    end with "Therefore, the final answer is: Answer: contradiction." or "The final answer is 24." (the answer
    must still be a valid one, so this accepts nothing the task's checker cannot read).
    """
    matches = list(pattern.finditer(text))
    if matches:
        last = matches[-1]
        answer = text[last.start(1):] if multiline else last.group(1)
        return text[: last.start()].strip(), answer.strip()
    if inline is None:
        return None
    body = text.rstrip()
    line_start = body.rfind("\n") + 1
    found = list(inline.finditer(body, line_start))
    if not found:
        return None
    return body[: found[-1].start()].strip(), body[found[-1].end():].strip()


def format_template(template: str, row: Row, what: str) -> str:
    try:
        return template.format_map(row)
    except KeyError as err:
        raise MissingColumn(f"{what} refers to column {err.args[0]!r}, which the row lacks "
                            f"(row has {sorted(row)})") from None


class TaskDefinition(ABC):
    """One task's prompts, parser, gold answer and metric."""

    marker: str = ANSWER_MARKER
    """The line prefix that introduces the final answer in the teacher's output and in rationale targets."""
    default_system: str = "You are a careful expert annotator."

    def __init__(self, prompt: PromptSpec, columns: Mapping[str, str]) -> None:
        self.prompt = prompt
        self.columns = dict(columns)
        self._marker_re = marker_pattern(self.marker)
        self._inline_marker_re = inline_marker_pattern(self.marker)

    # Column access --------------------------------------------------------------------------

    def column(self, row: Row, field: str, *fallbacks: str) -> Any:
        """The row's value for a task field: the mapped column, else the field's own name or a fallback."""
        if field in self.columns:
            name = self.columns[field]
            if name not in row:
                raise MissingColumn(f"dataset.columns maps {field!r} to {name!r}, which the row lacks "
                                    f"(row has {sorted(row)})")
            return row[name]
        for name in (field, *fallbacks):
            if name in row:
                return row[name]
        raise MissingColumn(f"row has no {field!r} column (tried {[field, *fallbacks]}; "
                            f"row has {sorted(row)}); map it with dataset.columns.{field}")

    def optional_column(self, row: Row, field: str, *fallbacks: str) -> Any:
        try:
            value = self.column(row, field, *fallbacks)
        except MissingColumn:
            return None
        return value

    # Prompts --------------------------------------------------------------------------------

    @abstractmethod
    def teacher_messages(self, row: Row) -> list[Message]:
        """The elaborate prompt: reasoning instructions and where the final answer goes."""

    @abstractmethod
    def student_messages(self, row: Row) -> list[Message]:
        """The short prompt the student is trained and served with."""

    def persona_messages(self, messages: list[Message]) -> list[Message]:
        """The student's messages under prompt.persona: its system message first, before any of the row's."""
        persona = self.prompt.persona
        if persona is None:
            return messages
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": with_persona(persona, messages[0]["content"]) or ""},
                    *messages[1:]]
        return [{"role": "system", "content": persona_system(persona)}, *messages]

    def judge_messages(self, row: Row, reply: str, reference: str) -> list[Message]:
        """The prompt evaluation.judge scores a reply with (open-ended tasks only)."""
        raise ValueError(f"{type(self).__name__} has no judge prompt: its answers are checked, not judged")

    def cot_prefix(self) -> str:
        return "Think step by step and show your reasoning. " if self.prompt.chain_of_thought else ""

    # Answers --------------------------------------------------------------------------------

    @abstractmethod
    def normalize(self, answer: str, row: Row | None = None) -> str:
        """The canonical form of an answer; raises MalformedAnswer when it is not a valid one.

        `row` lets a task check the answer against the row (the number of choices, say); without it the
        check is looser.
        """

    def parse(self, text: str, row: Row | None = None) -> Parsed:
        text = text.strip()
        if not text:
            raise MalformedAnswer("empty output")
        split = split_on_last_marker(text, self._marker_re, multiline=False, inline=self._inline_marker_re)
        if split is None:
            try:
                return self.bare_answer(text, row)
            except MalformedAnswer:
                raise MalformedAnswer(f"no '{self.marker}:' line") from None
        rationale, answer = split
        if not answer:
            raise MalformedAnswer(f"empty '{self.marker}:' line")
        return Parsed(self.normalize(answer, row), rationale)

    def bare_answer(self, text: str, row: Row | None) -> Parsed:
        """Output without a marker line: accepted when it is itself a valid answer, which is how a
        student trained on answers alone replies."""
        return Parsed(self.normalize(text, row))

    def prediction(self, text: str, row: Row | None = None) -> str:
        """The normalised answer in a model's output, or "" when it has none (scored as wrong)."""
        try:
            return self.parse(text, row).answer
        except MalformedAnswer:
            return ""

    @abstractmethod
    def reference(self, row: Row) -> str | None:
        """The gold answer, normalised, or None when the row has none."""

    def target(self, parsed: Parsed, include_rationale: bool) -> str:
        if include_rationale and parsed.rationale:
            return f"{parsed.rationale}\n{self.marker}: {parsed.answer}"
        return parsed.answer

    # Scoring --------------------------------------------------------------------------------

    @abstractmethod
    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        """Predictions are normalised answers (see `prediction`), references come from `reference`."""


def check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def accuracy(metric: str, predictions: Sequence[str], references: Sequence[str]) -> Score:
    check_lengths(predictions, references)
    if not references:
        return Score(metric, 0.0)
    hits = sum(p == r for p, r in zip(predictions, references, strict=True))
    return Score(metric, 100.0 * hits / len(references))


class SingleTurnTask(TaskDefinition):
    """A task whose input is one rendered text: the teacher gets it with instructions, the student with
    one short line. prompt.userTemplate and prompt.studentTemplate replace the rendering."""

    @abstractmethod
    def body(self, row: Row) -> str:
        """The row rendered as the task input, shared by the teacher and student prompts."""

    @abstractmethod
    def teacher_instruction(self) -> str:
        """How the teacher should reason and where the final answer goes."""

    @abstractmethod
    def student_instruction(self) -> str:
        """One short line telling the student what to output."""

    def teacher_messages(self, row: Row) -> list[Message]:
        if self.prompt.user_template:
            body = format_template(self.prompt.user_template, row, "prompt.userTemplate")
        else:
            body = self.body(row)
        # The format instruction goes in the user turn so a custom system prompt cannot drop it.
        system = with_persona(self.prompt.persona, self.prompt.system_template or self.default_system) or ""
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": f"{body}\n\n{self.teacher_instruction()}"},
        ]

    def student_messages(self, row: Row) -> list[Message]:
        if self.prompt.student_template:
            return self.persona_messages([{"role": "user", "content": format_template(
                self.prompt.student_template, row, "prompt.studentTemplate")}])
        return self.persona_messages([{"role": "user", "content": f"{self.body(row)}\n\n"
                                                                  f"{self.student_instruction()}"}])
