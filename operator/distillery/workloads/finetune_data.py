"""The fine-tuning set: the teacher's accepted labels turned into token ids and loss masks.

Each example is the student's SHORT prompt rendered with the tokenizer's chat
template up to the assistant turn (exactly what the server feeds the model at
inference), followed by the target and the end-of-turn token. Only the target and
that token carry a loss; the prompt is masked with -100.

With student.loss kd an example also carries, at each answer token, the teacher's top-k distribution mapped to
student ids, where the teacher's tokens line up with the student's (`StudentVocabulary.align`).
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.workloads.labels import LabelRecord, read_labels
from distillery.workloads.tasks import MissingColumn, Parsed, TaskDefinition
from distillery.workloads.teacher_logprobs import StudentVocabulary, TopK

IGNORE_INDEX = -100
PAD_MULTIPLE = 64
"""Packed rows are padded to a multiple of this: a handful of shapes, so kernels and the allocator
reuse what they set up for earlier steps."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX where no loss is taken (prompt), else the token id."""
    teacher_top: list[TopK | None] | None = None
    """student.loss kd, per token of input_ids: the teacher's distribution over that token, where it has one."""


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
    kd: bool = False
    """Built for student.loss kd: the counts below apply."""
    kd_examples: int = 0
    """Examples with the teacher's distribution at their answer tokens."""
    kd_unaligned: int = 0
    """Examples trained on cross-entropy alone: the teacher's tokens do not line up with the student's."""
    kd_missing: int = 0
    """Examples trained on cross-entropy alone: their label was stored without log-probabilities."""

    def summary(self) -> dict[str, int]:
        kd = {"kd_examples": self.kd_examples, "kd_unaligned": self.kd_unaligned,
              "kd_missing": self.kd_missing} if self.kd else {}
        return {"examples": len(self.examples), "rejected": self.rejected, "bad_rows": self.bad_rows,
                "truncated": self.truncated, "dropped": self.dropped, **kd}


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


def with_teacher(example: Example, aligned: list[TopK]) -> Example:
    """`example` with the teacher's distribution at its answer tokens; the end-of-turn token gets none."""
    prompt = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    top: list[TopK | None] = [None] * prompt + list(aligned)
    return Example(example.input_ids, example.labels, (top + [None] * len(example.input_ids))[:len(example.input_ids)])


def build_finetune_set(records: Iterable[LabelRecord], task: TaskDefinition, tokenizer: Any,
                       max_seq_length: int, include_rationale: bool,
                       vocabulary: StudentVocabulary | None = None) -> FinetuneSet:
    """With `vocabulary` (student.loss kd) the teacher's tokens are checked against it first
    (VocabularyMismatch), and examples get the teacher's distributions where they line up."""
    result = FinetuneSet(kd=vocabulary is not None)
    if vocabulary is not None:
        records = list(records)
        vocabulary.check(r.logprobs for r in records if r.status == "ok" and r.logprobs is not None)
    for record in records:
        if record.status != "ok":
            result.rejected += 1
            continue
        try:
            messages = task.student_messages(record.row)
        except MissingColumn:
            result.bad_rows += 1
            continue
        # teacherStrategy all: every teacher's valid reply is an example of its own. Only the chosen reply has
        # log-probabilities: logit distillation takes a single teacher (spec validation).
        replies = [(Parsed(record.answer, record.rationale), record.logprobs),
                   *((Parsed(a.answer, a.rationale), None) for a in record.alternatives or [])]
        for reply, logprobs in replies:
            target = task.target(reply, include_rationale)
            example, truncated = encode_example(tokenizer, messages, target, max_seq_length)
            if example is None:
                result.dropped += 1
                continue
            result.truncated += truncated
            if vocabulary is not None:
                aligned = None
                if logprobs is None:
                    result.kd_missing += 1
                elif (aligned := vocabulary.align(target, tokenizer(target, add_special_tokens=False)["input_ids"],
                                                  logprobs)) is None:
                    result.kd_unaligned += 1
                else:
                    result.kd_examples += 1
                    example = with_teacher(example, aligned)
            result.examples.append(example)
    return result


def load_finetune_set(labels_dir: Path, task: TaskDefinition, tokenizer: Any, max_seq_length: int,
                      include_rationale: bool, vocabulary: StudentVocabulary | None = None) -> FinetuneSet:
    """The fine-tuning set from `<labels_dir>/train-shard-*.jsonl`, in row_id order."""
    return build_finetune_set(read_labels(labels_dir, "train"), task, tokenizer, max_seq_length,
                              include_rationale, vocabulary)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fill_rows(lengths: Sequence[int], row_capacity: int) -> list[list[int]]:
    """First fit, longest first: few rows, and the same rows for the same lengths."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(row_capacity)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack(examples: Sequence[Example], pad_token_id: int, row_capacity: int) -> dict[str, Any]:
    """Examples laid end to end in rows of at most `row_capacity` tokens (an example longer than that gets a
    row of its own), every row right-padded to the longest one rounded up to a multiple of PAD_MULTIPLE.

    position_ids restart at 0 with each example and with the padding: transformers reads a restart as the
    start of another sequence and keeps attention inside each one. The loss is taken at `loss_positions`
    (flat indices into the rows) against `loss_targets`: the next token of the same example wherever that
    token is an answer token, so no prediction crosses from one example into the next or into padding.
    Indices rather than a -100-filled tensor let the model compute logits for those positions only, without
    a device-to-host sync to find them.
    """
    import torch

    rows = _fill_rows([len(e.input_ids) for e in examples], row_capacity)
    width = round_up(max(sum(len(examples[i].input_ids) for i in row) for row in rows), PAD_MULTIPLE)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    loss_positions: list[int] = []
    loss_targets: list[int] = []
    kd_rows: list[int] = []
    kd_top: list[TopK] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            example = examples[i]
            n = len(example.input_ids)
            input_ids[r, start:start + n] = torch.tensor(example.input_ids)
            position_ids[r, start:start + n] = torch.arange(n)
            for t, target in enumerate(example.labels[1:]):
                if target != IGNORE_INDEX:
                    loss_positions.append(r * width + start + t)
                    loss_targets.append(target)
                    top = example.teacher_top[t + 1] if example.teacher_top is not None else None
                    if top is not None and top[0]:
                        kd_rows.append(len(loss_targets) - 1)
                        kd_top.append(top)
            start += n
        position_ids[r, start:] = torch.arange(width - start)
    batch = {"input_ids": input_ids, "position_ids": position_ids,
             "loss_positions": torch.tensor(loss_positions, dtype=torch.long),
             "loss_targets": torch.tensor(loss_targets, dtype=torch.long)}
    if kd_rows:
        # kd_rows index loss_targets; a position with fewer than k teacher tokens is padded with -inf, which
        # gives the padding no weight in the teacher's distribution.
        k = max(len(ids) for ids, _ in kd_top)
        batch["kd_rows"] = torch.tensor(kd_rows, dtype=torch.long)
        batch["kd_ids"] = torch.tensor([ids + [0] * (k - len(ids)) for ids, _ in kd_top], dtype=torch.long)
        batch["kd_logprobs"] = torch.tensor([lps + [-math.inf] * (k - len(lps)) for _, lps in kd_top],
                                            dtype=torch.float32)
    return batch
