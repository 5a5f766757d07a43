"""Text-overlap metrics: ROUGE from rouge-score, and SQuAD-style token F1 (which no installed library
offers on its own) on lowercase word tokens, as rouge-score's tokenizer keeps them."""

import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1 (0..100) with Porter stemming, by rouge-score: the
    reference implementation summarization papers report."""
    from rouge_score import rouge_scorer  # imported here: only summarization needs it

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(_sentence_lines(reference), _sentence_lines(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(references) if references else 0.0 for name, total in totals.items()}


def _sentence_lines(text: str) -> str:
    """ROUGE-Lsum splits summaries on newlines; rouge-score leaves the sentence split to the caller (its
    docs use nltk's punkt, which needs a data download), so split after sentence-ending punctuation."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 in 0..1 (SQuAD style): a shared token counts as often as both texts have it."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0
