"""Math word problems with a numeric answer (GSM8K style), compared after numeric normalisation."""

import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from distillery.workloads.tasks.base import MalformedAnswer, Parsed, Row, Score, SingleTurnTask, accuracy

_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*-?\d+(?:\.\d+)?)?")
_BARE_NUMBER = re.compile(r"[\s$\\]*(" + _NUMBER.pattern + r")[\s%.]*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_GSM8K_FINAL = "####"


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced (\\boxed{\\frac{3}{4}} nests)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def canonical_number(value: Fraction) -> str:
    """Integers as integers, terminating decimals as decimals, anything else as a reduced fraction."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".")


def _clean(text: str) -> str:
    text = last_boxed(text) or text
    text = _FRAC.sub(r"(\1)/(\2)", text).replace("(", "").replace(")", "")
    text = text.replace("\u2212", "-").replace("\\$", "$").replace("\\!", "").replace("\\%", "%")
    return _THOUSANDS.sub("", text)


def normalize_number(text: str) -> str:
    """The last number in `text`, canonical: '$1,234.50' -> '1234.5', '\\boxed{\\frac{3}{4}}' -> '0.75'."""
    numbers = _NUMBER.findall(_clean(text))
    if not numbers:
        raise MalformedAnswer(f"no number in {text.strip()[:60]!r}")
    try:
        return canonical_number(Fraction(numbers[-1].replace(" ", "")))
    except ZeroDivisionError:
        raise MalformedAnswer(f"division by zero in {numbers[-1]!r}") from None


class MathTask(SingleTurnTask):
    def body(self, row: Row) -> str:
        return f"Problem: {self.column(row, 'question', 'problem', 'text')}"

    def teacher_instruction(self) -> str:
        return (f"{self.cot_prefix()}Solve the problem. Finish with a final line 'Answer: <number>' "
                "giving only the final numeric answer, without units.")

    def student_instruction(self) -> str:
        return "Give the final numeric answer."

    def normalize(self, answer: str, row: Row | None = None) -> str:
        return normalize_number(answer)

    def bare_answer(self, text: str, row: Row | None) -> Parsed:
        # Without an answer line only an explicit final answer counts: the last number of a
        # worked solution is often an intermediate result.
        boxed = last_boxed(text)
        if boxed is not None:
            # The rationale keeps the sentence that states the result ("... is \\(72\\)."), unboxed: cut at the
            # box it would end mid-sentence, and a target appends its own answer line.
            start = text.rfind("\\boxed{")
            rationale = text[:start] + boxed + text[start + len("\\boxed{") + len(boxed) + 1:]
            return Parsed(normalize_number(text), rationale.strip())
        if _GSM8K_FINAL in text:
            rationale, _, final = text.rpartition(_GSM8K_FINAL)
            return Parsed(normalize_number(final), rationale.strip())
        match = _BARE_NUMBER.fullmatch(_clean(text))
        if match is None:
            raise MalformedAnswer("not a bare number")
        return Parsed(normalize_number(match.group(1)))

    def reference(self, row: Row) -> str | None:
        gold = self.optional_column(row, "answer", "solution", "target")
        if gold is None or isinstance(gold, bool):
            return None
        gold = str(gold)
        if _GSM8K_FINAL in gold:
            gold = gold.rpartition(_GSM8K_FINAL)[2]
        # A gold answer must be a plain number: \sqrt{2} is not "2".
        match = _BARE_NUMBER.fullmatch(_clean(gold))
        return normalize_number(match.group(1)) if match else None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        return accuracy("exact_match", predictions, references)
