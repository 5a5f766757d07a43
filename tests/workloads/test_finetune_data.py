"""Fine-tuning examples: the student's short prompt through the chat template, loss on the answer only."""

from pathlib import Path

import pytest

from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.tiny import build_tokenizer
from distillery.workloads.finetune_data import (
    IGNORE_INDEX,
    PAD_MULTIPLE,
    build_finetune_set,
    encode_example,
    load_finetune_set,
    pack,
    prompt_ids,
)
from distillery.workloads.labels import LabelRecord
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


def test_pack_lays_examples_end_to_end_and_takes_the_loss_inside_each(tokenizer, task) -> None:
    rows = tm.nli_rows(3)
    answers = ["entailment", "a much longer answer than the others", "neutral"]
    short, middle, long = sorted((encode_example(tokenizer, task.student_messages(r), t, 256)[0]
                                  for r, t in zip(rows, answers, strict=True)), key=lambda e: len(e.input_ids))
    examples = [middle, long, short]
    lengths = [len(e.input_ids) for e in examples]
    capacity = lengths[1] + lengths[0]  # the two longest share a row, the shortest gets the second
    assert lengths[0] < lengths[1]
    batch = pack(examples, tokenizer.pad_token_id, capacity)
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["position_ids"].shape == (2, width)
    assert width % PAD_MULTIPLE == 0 and width - PAD_MULTIPLE < capacity <= width
    first = batch["input_ids"][0].tolist()
    assert first[:lengths[1] + lengths[0]] == examples[1].input_ids + examples[0].input_ids
    assert batch["position_ids"][0].tolist() == (list(range(lengths[1])) + list(range(lengths[0]))
                                                 + list(range(width - capacity)))
    assert batch["input_ids"][1, :lengths[2]].tolist() == examples[2].input_ids
    assert (batch["input_ids"][1, lengths[2]:] == tokenizer.pad_token_id).all()
    assert batch["position_ids"][1, lengths[2]:].tolist() == list(range(width - lengths[2]))

    # Every answer token is predicted once, from the position before it in the same example.
    flat = batch["input_ids"].flatten()
    targets = batch["loss_targets"].tolist()
    assert targets == flat[batch["loss_positions"] + 1].tolist()
    expected = [t for e in (examples[1], examples[0], examples[2]) for t in supervised(e)]
    assert targets == expected
    starts = {0, lengths[1], width}  # each example's first token is never a target
    assert not starts & {p + 1 for p in batch["loss_positions"].tolist()}
