"""Logit distillation (student.loss kd): the loss on a hand-checked example, the teacher's log-probabilities
through the labeler (and a resume), and the trainer with a student that shares the teacher's vocabulary or not."""

import asyncio
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from distillery.api.pipeline import PipelineConfig, TeacherClientConfig
from distillery.api.reports import ExitCode
from distillery.api.spec import KD_NEEDS_LOGPROBS, DistillationSpec, PromptSpec, Task
from distillery.devcluster.teacher_server import LogprobsMode, TaskAwareResponder, TeacherServer, lookup_from_rows
from distillery.devcluster.tiny import build_tokenizer
from distillery.workloads import labeler
from distillery.workloads.labeler import NO_LOGPROBS
from distillery.workloads.labels import read_labels, read_records, shard_path
from distillery.workloads.loss import answer_loss_sum
from distillery.workloads.tasks import get_task
from distillery.workloads.teacher_logprobs import StudentVocabulary, TokenLogprobs, text_bytes, token_bytes_table
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload

KD = {"type": "kd", "weight": 0.5, "temperature": 2.0, "top_logprobs": 4}


# The loss ---------------------------------------------------------------------------------------

def _identity_head() -> torch.nn.Linear:
    head = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(4))
    return head


def test_kd_loss_matches_a_hand_checked_value() -> None:
    """Two answer positions over a 4-token vocabulary, logits = hidden state (identity lm_head).

    Position 0: logits (2, 1, 0, 0), target 0, teacher top-2 = token 0 at 0.6, token 1 at 0.2; weight 0.5, T 2.
      CE   = log(e^2 + e + 2) - 2                                  = 0.493809
      p    = (0.6^(1/2), 0.2^(1/2)) renormalised = (sqrt3, 1) / (1 + sqrt3) = (0.633975, 0.366025)
      q    = softmax((1, 0.5, 0, 0)) at tokens 0, 1: log q = (1, 0.5) - log(e + e^0.5 + 2) = (-0.851129, -1.351129)
      KL   = 0.633975 x (ln 0.633975 + 0.851129) + 0.366025 x (ln 0.366025 + 1.351129) = 0.377336
      loss = 0.5 x 0.493809 + 0.5 x 2^2 x 0.377336                  = 1.001577
    Position 1: logits (0, 0, 3, 0), target 2, no teacher distribution: CE = log(3 + e^3) - 3 = 0.139207.
    """
    hidden = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    ce0 = math.log(math.e ** 2 + math.e + 2) - 2
    p = (math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3)))
    log_q = (1 - math.log(math.e + math.e ** 0.5 + 2), 0.5 - math.log(math.e + math.e ** 0.5 + 2))
    kl = sum(pi * (math.log(pi) - qi) for pi, qi in zip(p, log_q, strict=True))
    expected = 0.5 * ce0 + 0.5 * 4 * kl + (math.log(3 + math.e ** 3) - 3)
    assert expected == pytest.approx(1.001577 + 0.139207, abs=1e-5)

    def total(ids: list[int], logprobs: list[float]) -> torch.Tensor:
        return answer_loss_sum(hidden, _identity_head(), targets, chunk=1, kd=(0.5, 2.0),
                               kd_rows=torch.tensor([0]), kd_ids=torch.tensor([ids]),
                               kd_logprobs=torch.tensor([logprobs]))

    loss = total([0, 1], [math.log(0.6), math.log(0.2)])
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # A position padded to a larger k (fewer tokens returned) weighs the padding 0, gradients stay finite.
    padded = total([0, 1, 3], [math.log(0.6), math.log(0.2), -math.inf])
    assert padded.item() == pytest.approx(expected, abs=1e-5)
    padded.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    # Without kd the same positions give the summed cross-entropy.
    plain = answer_loss_sum(hidden, _identity_head(), targets, chunk=1)
    assert plain.item() == pytest.approx(ce0 + math.log(3 + math.e ** 3) - 3, abs=1e-5)


def test_token_bytes_of_the_tiny_tokenizer_spell_any_text() -> None:
    tokenizer = build_tokenizer()
    table = token_bytes_table(tokenizer)
    text = "Let me reason: 2 + 3 = 5, déjà vu \U0001f600\n<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids) == text.encode()
    assert StudentVocabulary(tokenizer).ids[b"<|im_end|>"] == tokenizer.eos_token_id


def test_kd_with_an_endpoint_that_returns_no_logprobs_is_refused() -> None:
    spec: dict[str, Any] = {
        "task": "math", "region": "westus3",
        "teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "m", "logprobs": False}},
        "dataset": {"train": {"rows": [{"question": "1+1?", "answer": "2"}]}},
        "student": {"model": "Qwen/Qwen2.5-0.5B-Instruct", "loss": KD},
    }
    with pytest.raises(ValidationError, match=re.escape("student.loss.type kd needs")):
        DistillationSpec.model_validate(spec)
    assert "teacher.endpoint.logprobs" in KD_NEEDS_LOGPROBS
    spec["teacher"]["endpoint"]["logprobs"] = True
    assert DistillationSpec.model_validate(spec).student.loss.top_logprobs == 4
    spec["student"]["loss"] = {"type": "kd", "topLogprobs": 21}
    with pytest.raises(ValidationError, match=r"top_logprobs|topLogprobs"):
        DistillationSpec.model_validate(spec)


# Labeling ---------------------------------------------------------------------------------------

TASK = get_task(Task.NLI, PromptSpec(), {})
TRAIN, VALIDATION = tm.nli_rows(tm.TRAIN_ROWS), tm.nli_rows(tm.VALIDATION_ROWS, offset=100)


def kd_config(workspace: Path, model: str | Path, url: str, loss: dict[str, Any] | None = None) -> Path:
    """An NLI pipeline.json whose student trains on the teacher's whole reply with `loss` (kd by default)."""
    cfg = tm.pipeline_config(workspace, model, TRAIN, VALIDATION, **{
        **tm.STUDENT, "merge_weights": False, "include_rationale": True, "max_seq_length": 256,
        "loss": KD if loss is None else loss})
    cfg = cfg.model_copy(update={"teacher": TeacherClientConfig(
        base_url=url, model="teacher", concurrency=4, max_attempts=2, request_timeout_seconds=10)})
    workspace.mkdir(parents=True, exist_ok=True)
    return tm.write_config(workspace / "pipeline.json", cfg)


async def label(config: Path) -> int:
    return await asyncio.to_thread(labeler.main, ["--config", str(config), "--progress-interval", "0.1"])


def teacher(mode: LogprobsMode = "tiny") -> TeacherServer:
    return TeacherServer(TaskAwareResponder(lookup_from_rows(TASK, TRAIN + VALIDATION)), logprobs=mode)


async def test_labels_carry_the_teacher_logprobs_and_a_resume_keeps_them(tmp_path: Path) -> None:
    async with teacher() as server:
        config = kd_config(tmp_path, "student", server.url)
        assert await label(config) == 0
        labels = PipelineConfig.load(config).workspace.labels_dir
        records = read_labels(labels, "train")
        assert len(records) == tm.TRAIN_ROWS and all(r.status == "ok" for r in records)
        tokenizer = build_tokenizer()
        for record in records:
            logprobs = record.logprobs
            assert logprobs is not None
            # The stored tokens spell the reply; k alternatives each, the generated token first (most likely).
            assert b"".join(text_bytes(t) for t in logprobs.tokens) == record.raw.encode()
            assert len(logprobs.tokens) == len(tokenizer(record.raw, add_special_tokens=False)["input_ids"])
            assert all(len(top) == KD["top_logprobs"] and top[0][0] == token
                       for token, top in zip(logprobs.tokens, logprobs.top, strict=True))

        # A pod killed mid-write: four lines kept, a fifth cut short. The rerun asks only for the rest.
        path = shard_path(labels, "train", 0)
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:4]) + lines[4][:50])
        asked = sum(server.requests.values())
        assert await label(config) == 0
        assert sum(server.requests.values()) - asked == tm.TRAIN_ROWS - 4
        again = {r.row_id: r for r in read_records(path)[0]}
        assert [again[r.row_id].logprobs for r in records] == [r.logprobs for r in records]


async def test_answers_without_logprobs_are_rejected_with_the_reason(tmp_path: Path) -> None:
    async with teacher("off") as server:
        config = kd_config(tmp_path, "student", server.url)
        assert await label(config) == ExitCode.TOO_FEW_LABELS
        records = read_labels(PipelineConfig.load(config).workspace.labels_dir, "train")
        assert {(r.status, r.reason) for r in records} == {("rejected", NO_LOGPROBS)}


# Training ---------------------------------------------------------------------------------------

def train(config: Path, steps: int = 6) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """(exit code, termination message, stdout events) of `distillery train`."""
    termination = config.parent / "termination-log"
    result = tm.distillery(["train", "--config", str(config), "--max-steps", str(steps)], termination, timeout=600)
    return result.returncode, json.loads(termination.read_text()), tm.json_lines(result.stdout)


def adapter(config: Path) -> dict[str, torch.Tensor]:
    return load_file(PipelineConfig.load(config).workspace.adapter_dir / "adapter_model.safetensors")


async def test_a_kd_student_differs_from_an_sft_student_with_the_same_seed(tmp_path: Path, model_dir: Path) -> None:
    async with teacher() as server:
        kd = kd_config(tmp_path / "kd", model_dir, server.url)
        assert await label(kd) == 0
    runs = {"kd": kd}
    for name, loss in (("sft", {"type": "sft"}), ("kd-weight-0", {**KD, "weight": 0.0})):
        runs[name] = kd_config(tmp_path / name, model_dir, "http://127.0.0.1:9/v1", loss)
        shutil.copytree(tmp_path / "kd" / "labels", tmp_path / name / "labels")

    results = {name: await asyncio.to_thread(train, config) for name, config in runs.items()}
    for name, (code, summary, _) in results.items():
        assert code == 0, (name, summary)
    summary = results["kd"][1]
    assert summary["examples"] == tm.TRAIN_ROWS and summary["kd_examples"] == tm.TRAIN_ROWS
    assert summary["kd_unaligned"] == 0 and summary["kd_missing"] == 0
    assert "kd_examples" not in results["sft"][1]

    sft, kd_weights, control = adapter(runs["sft"]), adapter(runs["kd"]), adapter(runs["kd-weight-0"])
    assert sft.keys() == kd_weights.keys()
    # Weight 0 trains exactly as sft (the same seed, data order and cross-entropy); weight 0.5 does not.
    assert all(torch.equal(sft[name], control[name]) for name in sft)
    assert any(not torch.allclose(sft[name], kd_weights[name]) for name in sft)


async def test_a_student_without_the_teacher_vocabulary_fails_before_training(tmp_path: Path,
                                                                             model_dir: Path) -> None:
    async with teacher("foreign") as server:
        config = kd_config(tmp_path, model_dir, server.url)
        assert await label(config) == 0
    code, summary, events = await asyncio.to_thread(train, config)
    assert code == 2, summary
    assert re.search(r"student's tokenizer lacks [1-9][0-9]* of the [0-9]+ distinct tokens", summary["error"])
    assert not any(event.get("event") == "start" for event in events)
    assert not PipelineConfig.load(config).workspace.checkpoints_dir.exists()


def test_the_answer_alone_starts_inside_a_teacher_token_and_is_not_aligned() -> None:
    """'entailment' after 'Answer:' is spelled ' entailment' by the teacher: no token boundary where the
    student's answer starts, so the example keeps cross-entropy only."""
    tokenizer = build_tokenizer()
    text = "I weigh it.\nAnswer: entailment"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    table = token_bytes_table(tokenizer)
    logprobs = TokenLogprobs(tokens=[table[i].decode("latin-1") for i in ids],
                             top=[[(table[i].decode("latin-1"), -0.1)] for i in ids])
    vocabulary = StudentVocabulary(tokenizer)
    assert vocabulary.align(text, ids, logprobs) == [([i], [-0.1]) for i in ids]
    answer = "entailment"
    assert vocabulary.align(answer, tokenizer(answer, add_special_tokens=False)["input_ids"], logprobs) is None


def test_a_token_the_server_could_not_spell_is_neither_a_mismatch_nor_a_distillation_target() -> None:
    """vLLM renders each token with decode(): a fragment of a multi-byte character arrives as U+FFFD."""
    tokenizer = build_tokenizer()
    vocabulary = StudentVocabulary(tokenizer)
    text = "Answer: 5"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    table = token_bytes_table(tokenizer)
    tokens = [table[i].decode("latin-1") for i in ids]
    lossy = "\ufffd".encode().decode("latin-1")
    logprobs = TokenLogprobs(tokens=tokens, top=[[(t, -0.2), (lossy, -1.9)] for t in tokens])
    assert vocabulary.check([logprobs]) == len(set(tokens)) + 1
    assert vocabulary.align(text, ids, logprobs) == [([i], [-0.2]) for i in ids]
    generated = TokenLogprobs(tokens=[*tokens[:-1], lossy], top=[[(t, -0.2)] for t in tokens])
    assert vocabulary.align(text, ids, generated) is None
