"""Multiple choice: the answer is one choice letter, A for the first choice."""

import json
import re
import string
from collections.abc import Sequence

from distillery.workloads.tasks.base import (
    MalformedAnswer,
    MissingColumn,
    Row,
    Score,
    SingleTurnTask,
    accuracy,
)

LETTERS = string.ascii_uppercase
MAX_CHOICES_WITHOUT_ROW = 10
"""Without the row the number of choices is unknown; A-J covers the common benchmarks (MMLU-Pro has 10)."""

_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.I)
_LEAD_LETTER = re.compile(r"^[(\[]?([A-Za-z])(?:([)\]])[.:]?|([.):,]))?(?:\s+(.*))?$", re.S)
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def parse_choices(value: object) -> tuple[list[str], list[str] | None]:
    """(choice texts, dataset labels) from a list, a JSON list, or a {"text": [...], "label": [...]} dict."""
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise MissingColumn(f"choices column is a string but not a JSON list: {text[:60]!r}") from None
    if isinstance(value, dict) and "text" in value:
        texts: list[object] = value["text"]
        labels = value.get("label")
        return [str(t) for t in texts], [str(label) for label in labels] if labels else None
    if isinstance(value, list | tuple):
        return [str(t) for t in value], None
    raise MissingColumn(f"choices must be a list or a {{text, label}} mapping, not {type(value).__name__}")


class MultipleChoiceTask(SingleTurnTask):
    def choices(self, row: Row) -> tuple[list[str], list[str] | None]:
        texts, labels = parse_choices(self.column(row, "choices", "options"))
        if not 2 <= len(texts) <= len(LETTERS):
            raise MissingColumn(f"a row needs 2 to {len(LETTERS)} choices, this one has {len(texts)}")
        return texts, labels

    def body(self, row: Row) -> str:
        question = self.column(row, "question", "text", "stem")
        options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(self.choices(row)[0]))
        return f"Question: {question}\n{options}"

    def teacher_instruction(self) -> str:
        return (f"{self.cot_prefix()}Pick the single best choice. Finish with a final line "
                "'Answer: <letter>' giving exactly one choice letter.")

    def student_instruction(self) -> str:
        return "Answer with the letter of the correct choice."

    def normalize(self, answer: str, row: Row | None = None) -> str:
        texts = self.choices(row)[0] if row is not None else None
        count = len(texts) if texts is not None else MAX_CHOICES_WITHOUT_ROW
        cleaned = _PREFIX.sub("", answer.strip().strip("*_`\"' ")).strip("*_` ")
        match = _LEAD_LETTER.match(cleaned)
        if match is None:
            return self._by_text(answer, texts)
        letter, closing, delimiter, rest = match.groups()
        letter = letter.upper()
        index = LETTERS.index(letter)
        others = {m for m in _STANDALONE_LETTER.findall(rest or "") if LETTERS.index(m) < count} - {letter}
        if rest and not (closing or delimiter):
            if others and match.group(1).isupper():
                raise MalformedAnswer(f"more than one choice letter in {answer.strip()[:60]!r}")
            # "A bird can fly" starts with a word, not a choice letter.
            return self._by_text(answer, texts)
        if index >= count:
            raise MalformedAnswer(f"choice {letter} is not one of A-{LETTERS[count - 1]}")
        repeats_choice = texts is not None and rest is not None and (
            rest.strip(" .*").lower() == texts[index].strip().lower())
        if others and not repeats_choice:
            raise MalformedAnswer(f"more than one choice letter in {answer.strip()[:60]!r}")
        return letter

    @staticmethod
    def _by_text(answer: str, texts: list[str] | None) -> str:
        """An answer that repeats a choice's text instead of its letter."""
        wanted = answer.strip().strip(" .*").lower()
        hits = [i for i, text in enumerate(texts or []) if text.strip().lower() == wanted]
        if len(hits) == 1:
            return LETTERS[hits[0]]
        raise MalformedAnswer(f"no choice letter in {answer.strip()[:60]!r}")

    def reference(self, row: Row) -> str | None:
        gold = self.optional_column(row, "answer", "answerKey", "label")
        if gold is None or isinstance(gold, bool):
            return None
        texts, labels = self.choices(row)
        if isinstance(gold, int):
            return LETTERS[gold] if 0 <= gold < len(texts) else None
        gold = str(gold).strip()
        if labels and gold in labels:
            return LETTERS[labels.index(gold)]
        if gold.isdigit():
            index = int(gold)
            return LETTERS[index] if index < len(texts) else None
        try:
            return self.normalize(gold, row)
        except MalformedAnswer:
            return None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        return accuracy("accuracy", predictions, references)
