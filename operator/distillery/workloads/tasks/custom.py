"""A user-defined task: prompts from templates, answer by regex or 'Answer:' line, exact-match accuracy."""

import re
from collections.abc import Mapping, Sequence

from distillery.api.spec import PromptSpec
from distillery.workloads.tasks.base import (
    MalformedAnswer,
    Message,
    Parsed,
    Row,
    Score,
    TaskDefinition,
    accuracy,
    format_template,
    split_on_last_marker,
)


def _normalize_text(answer: str) -> str:
    return " ".join(answer.split()).strip("*_` ")


class CustomTask(TaskDefinition):
    def __init__(self, prompt: PromptSpec, columns: Mapping[str, str]) -> None:
        if not prompt.user_template:
            raise ValueError("task custom needs prompt.userTemplate")
        super().__init__(prompt, columns)
        self.user_template = prompt.user_template
        self.answer_re = re.compile(prompt.answer_pattern, re.M) if prompt.answer_pattern else None
        if self.answer_re is not None and self.answer_re.groups < 1:
            raise ValueError("prompt.answerPattern needs a capturing group around the answer")

    def teacher_messages(self, row: Row) -> list[Message]:
        user = format_template(self.user_template, row, "prompt.userTemplate")
        instruction = self.cot_prefix()
        if self.answer_re is None:
            # Without a pattern the answer is found by its line, so the teacher must write one.
            instruction += "Finish with a final line of the form 'Answer: <answer>'."
        messages = []
        if self.prompt.system_template:
            system = format_template(self.prompt.system_template, row, "prompt.systemTemplate")
            messages.append({"role": "system", "content": system})
        content = f"{user}\n\n{instruction.strip()}" if instruction else user
        return [*messages, {"role": "user", "content": content}]

    def student_messages(self, row: Row) -> list[Message]:
        template = self.prompt.student_template or self.user_template
        return [{"role": "user", "content": format_template(template, row, "prompt.studentTemplate")}]

    def normalize(self, answer: str, row: Row | None = None) -> str:
        normalized = _normalize_text(answer)
        if not normalized:
            raise MalformedAnswer("empty answer")
        return normalized

    def parse(self, text: str, row: Row | None = None) -> Parsed:
        if not text.strip():
            raise MalformedAnswer("empty output")
        if self.answer_re is not None:
            # The last match: a reasoning model restates candidate answers before the final one.
            matches = list(self.answer_re.finditer(text))
            if matches:
                last = matches[-1]
                return Parsed(self.normalize(last.group(1) or ""), text[: last.start()].strip())
        split = split_on_last_marker(text, self._marker_re, multiline=False)
        if split is not None:
            rationale, answer = split
            return Parsed(self.normalize(answer), rationale)
        return Parsed(self.normalize(text))

    def reference(self, row: Row) -> str | None:
        gold = self.optional_column(row, "answer", "label", "target", "output")
        if gold is None:
            return None
        return _normalize_text(str(gold)) or None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        return accuracy("exact_match",
                        [p.casefold() for p in predictions], [r.casefold() for r in references])
