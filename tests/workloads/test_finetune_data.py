"""Fine-tuning examples: the student's short prompt through the chat template, loss on the answer only."""

from pathlib import Path

import pytest

from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.tiny import build_tokenizer
from distillery.workloads.finetune_data import (
    IGNORE_INDEX,
    build_finetune_set,
    collate,
    encode_example,
    load_finetune_set,
    prompt_ids,
)
from distillery.workloads.labeler import LabelRecord
from distillery.workloads.tasks import get_task
from tests.workloads import tinymodel as tm


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def task():
    return get_task(Task.NLI, PromptSpec(), {})


def supervised(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


def test_loss_covers_the_answer_and_end_of_turn_only(tmp_path: Path, tokenizer, task) -> None:
    rows = tm.nli_rows(4)
    tm.write_labels(tmp_path, "train", rows, [r["label"] for r in rows])
    data = load_finetune_set(tmp_path / "labels", task, tokenizer, 256, include_rationale=False)
    assert len(data.examples) == 4 and data.truncated == data.dropped == data.rejected == 0
    for row, example in zip(rows, data.examples, strict=True):
        prompt = prompt_ids(tokenizer, task.student_messages(row))
        assert example.input_ids[: len(prompt)] == prompt
        assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert example.labels[len(prompt):] == example.input_ids[len(prompt):]
        assert tokenizer.decode(supervised(example)) == f"{row['label']}<|im_end|>"
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
        assert "Relation" in tokenizer.decode(prompt)  # the short student prompt, not the teacher's


def test_rationale_target_and_rejected_records(tmp_path: Path, tokenizer, task) -> None:
    rows = tm.nli_rows(3)
    tm.write_labels(tmp_path, "train", rows, ["entailment", None, "neutral"], shards=1)
    data = load_finetune_set(tmp_path / "labels", task, tokenizer, 256, include_rationale=True)
    assert (len(data.examples), data.rejected) == (2, 1)
    target = tokenizer.decode(supervised(data.examples[0]))
    assert target.startswith("The hypothesis is about") and target.endswith("\nAnswer: entailment<|im_end|>")


def test_truncation_keeps_answer_tokens_or_drops_the_example(tokenizer, task) -> None:
    messages = task.student_messages(tm.nli_rows(1)[0])
    full, truncated = encode_example(tokenizer, messages, "contradiction", 1024)
    answer_tokens = len(supervised(full))
    cut, was_cut = encode_example(tokenizer, messages, "contradiction", len(full.input_ids) - 1)
    assert not truncated and was_cut and len(supervised(cut)) == answer_tokens - 1
    none, dropped = encode_example(tokenizer, messages, "contradiction", len(full.input_ids) - answer_tokens)
    assert none is None and dropped


def test_bad_rows_are_counted_not_trained(tokenizer, task) -> None:
    line = tm.label_record("train", 0, tm.nli_rows(1)[0], "neutral")
    del line["row"]["hypothesis"]
    record = LabelRecord.model_validate(line)
    data = build_finetune_set([record], task, tokenizer, 64, include_rationale=False)
    assert (len(data.examples), data.bad_rows) == (0, 1)


def test_collate_pads_right_and_masks_padding(tokenizer, task) -> None:
    rows = tm.nli_rows(2)
    examples = [encode_example(tokenizer, task.student_messages(r), t, 256)[0]
                for r, t in zip(rows, ["entailment", "a much longer answer than the other one"], strict=True)]
    batch = collate(examples, tokenizer.pad_token_id)
    short = len(examples[0].input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(len(e.input_ids) for e in examples))
    assert batch["attention_mask"][0, :short].all() and not batch["attention_mask"][0, short:].any()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
