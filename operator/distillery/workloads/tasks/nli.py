"""Natural language inference: entailment / neutral / contradiction."""

import re
from collections.abc import Sequence

from distillery.workloads.tasks.base import MalformedAnswer, Row, Score, SingleTurnTask, accuracy

LABELS = ("entailment", "neutral", "contradiction")

# GLUE MNLI and SNLI number their labels in this order; -1 marks rows without a gold label.
_INDEXED = dict(enumerate(LABELS))

_PHRASES = {
    "yes": "entailment", "true": "entailment", "entails": "entailment", "entailed": "entailment",
    "entail": "entailment", "implied": "entailment", "implies": "entailment", "follows": "entailment",
    "maybe": "neutral", "unknown": "neutral", "neither": "neutral", "undetermined": "neutral",
    "it is not possible to tell": "neutral", "cannot be determined": "neutral", "unrelated": "neutral",
    "not enough information": "neutral",
    "no": "contradiction", "false": "contradiction", "contradicts": "contradiction",
    "contradicted": "contradiction", "contradictory": "contradiction", "contradict": "contradiction",
}
_STEMS = {"entail": "entailment", "neutral": "neutral", "contradict": "contradiction"}


def normalize_label(answer: str) -> str:
    words = re.sub(r"[^a-z]+", " ", answer.lower()).split()
    phrase = " ".join(words)
    if phrase in LABELS:
        return phrase
    if phrase in _PHRASES:
        return _PHRASES[phrase]
    # "The hypothesis is entailed." names one label inside a sentence; a negation makes it ambiguous.
    found = {label for word in words for stem, label in _STEMS.items() if word.startswith(stem)}
    if len(found) == 1 and not {"not", "no", "neither", "nor"} & set(words):
        return found.pop()
    raise MalformedAnswer(f"invalid label {answer.strip()[:60]!r}; expected one of {', '.join(LABELS)}")


class NliTask(SingleTurnTask):
    def body(self, row: Row) -> str:
        premise = self.column(row, "premise", "sentence1", "text")
        hypothesis = self.column(row, "hypothesis", "sentence2")
        return f"Premise: {premise}\nHypothesis: {hypothesis}"

    def teacher_instruction(self) -> str:
        return (f"{self.cot_prefix()}Decide whether the premise entails the hypothesis, contradicts it, "
                "or neither (neutral). Finish with a final line of exactly one of: "
                "'Answer: entailment', 'Answer: neutral', 'Answer: contradiction'.")

    def student_instruction(self) -> str:
        return "Relation (entailment, neutral or contradiction):"

    def normalize(self, answer: str, row: Row | None = None) -> str:
        return normalize_label(answer)

    def reference(self, row: Row) -> str | None:
        gold = self.optional_column(row, "label", "gold_label")
        if isinstance(gold, int) and not isinstance(gold, bool):
            return _INDEXED.get(gold)
        if not isinstance(gold, str):
            return None
        try:
            return normalize_label(gold)
        except MalformedAnswer:
            return None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> Score:
        return accuracy("accuracy", predictions, references)
