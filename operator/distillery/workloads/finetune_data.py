"""The fine-tuning set: the teacher's accepted labels turned into token ids and loss masks.

Each example is the student's SHORT prompt rendered with the tokenizer's chat
template up to the assistant turn (exactly what the server feeds the model at
inference), followed by the target and the end-of-turn token. Only the target and
that token carry a loss; the prompt is masked with -100.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.workloads.labeler import LabelRecord, read_labels
from distillery.workloads.tasks import MissingColumn, Parsed, TaskDefinition

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX where no loss is taken (prompt), else the token id."""


@dataclass
class FinetuneSet:
    examples: list[Example] = field(default_factory=list)
    rejected: int = 0
    """Records the teacher did not answer validly; never trained on."""
    bad_rows: int = 0
    """Accepted records whose row no longer renders into a student prompt."""
    truncated: int = 0
    """Examples cut at max_seq_length that still kept answer tokens."""
    dropped: int = 0
    """Examples whose prompt alone filled max_seq_length: no answer token left to learn from."""

    def summary(self) -> dict[str, int]:
        return {"examples": len(self.examples), "rejected": self.rejected, "bad_rows": self.bad_rows,
                "truncated": self.truncated, "dropped": self.dropped}


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered with the chat template, ending with the assistant header."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    # The template already spells out any BOS, so the tokenizer must not add another one.
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def encode_example(tokenizer: Any, messages: Sequence[dict[str, str]], target: str,
                   max_seq_length: int) -> tuple[Example | None, bool]:
    """(example, truncated); the example is None when truncation leaves no answer token."""
    prompt = prompt_ids(tokenizer, messages)
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + answer)[:max_seq_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_seq_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None, True
    return Example(input_ids, labels), len(prompt) + len(answer) > max_seq_length


def build_finetune_set(records: Iterable[LabelRecord], task: TaskDefinition, tokenizer: Any,
                       max_seq_length: int, include_rationale: bool) -> FinetuneSet:
    result = FinetuneSet()
    for record in records:
        if record.status != "ok":
            result.rejected += 1
            continue
        try:
            messages = task.student_messages(record.row)
        except MissingColumn:
            result.bad_rows += 1
            continue
        target = task.target(Parsed(record.answer, record.rationale), include_rationale)
        example, truncated = encode_example(tokenizer, messages, target, max_seq_length)
        if example is None:
            result.dropped += 1
            continue
        result.truncated += truncated
        result.examples.append(example)
    return result


def load_finetune_set(labels_dir: Path, task: TaskDefinition, tokenizer: Any, max_seq_length: int,
                      include_rationale: bool) -> FinetuneSet:
    """The fine-tuning set from `<labels_dir>/train-shard-*.jsonl`, in row_id order."""
    return build_finetune_set(read_labels(labels_dir, "train"), task, tokenizer, max_seq_length,
                              include_rationale)


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask and labels (IGNORE_INDEX on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[i, :n] = torch.tensor(example.input_ids)
        labels[i, :n] = torch.tensor(example.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
