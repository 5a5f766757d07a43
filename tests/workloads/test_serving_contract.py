"""What the trainer writes is what the serving image reads: LoRA, merged and full outputs of tiny Qwen2- and
Llama-3-shaped students, saved with the trainer's save calls (transformers 5.24 here), loaded with the
transformers that the vLLM image pins (images/vllm/requirements.lock) in a separate environment."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch

from distillery.devcluster.tiny import build_tokenizer
from distillery.workloads.models import load_model

REPO = Path(__file__).resolve().parents[2]
SERVING_LOCK = REPO / "images" / "vllm" / "requirements.lock"
# Packages that read a model directory; the rest (torch, numpy, jinja2) do not decide how files are read.
READERS = ("transformers", "tokenizers", "huggingface-hub", "safetensors")
MESSAGES = [{"role": "user", "content": "Question: what is 2 + 3?"}]

pytestmark = pytest.mark.workload

READ_SCRIPT = """
import json, sys, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
config = AutoConfig.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
ids = tokenizer.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True, return_tensors="pt",
                                    return_dict=True)["input_ids"]
out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
print(json.dumps({"transformers": transformers.__version__, "rope": dict(config.rope_parameters),
                  "tokenizer": type(tokenizer).__name__, "template": tokenizer.chat_template,
                  "tokens": out[0, ids.shape[1]:].tolist()}))
"""


def serving_pins() -> dict[str, str]:
    pins = dict(line.split("==") for line in SERVING_LOCK.read_text().splitlines()
                if line and not line.startswith(("#", " ")))
    return {name: pins[name] for name in READERS}


@pytest.fixture(scope="session")
def serving_python() -> Path:
    """A venv with the serving image's readers, cached by version; torch and the rest from the test venv."""
    pins = serving_pins()
    root = Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))
    venv = root / f"serving-readers-{pins['transformers']}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                        *(f"{n}=={v}" for n, v in pins.items())], check=True, timeout=600)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        # Appended after the venv's own site-packages, so its transformers wins over the test venv's.
        Path(site, "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        (venv / ".ready").touch()
    return python


def read(python: Path | str, path: Path) -> dict[str, Any]:
    done = subprocess.run([str(python), "-c", READ_SCRIPT, str(path), json.dumps(MESSAGES)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def tiny_student(shape: str, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    common: dict[str, Any] = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "initializer_range": 0.2, "tie_word_embeddings": False}
    torch.manual_seed(0)
    if shape == "qwen2":
        model: Any = Qwen2ForCausalLM(Qwen2Config(**common, rope_parameters={"rope_type": "default",
                                                                            "rope_theta": 1000000.0}))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, max_position_embeddings=131072, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_like_the_trainer(base: Path, method: str, out: Path) -> Path:
    """workloads/trainer.py save_outputs: module.save_pretrained + tokenizer.save_pretrained; merged from disk."""
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tokenizer()
    model = load_model(str(base))
    if method == "full":
        with torch.no_grad():
            model.model.layers[0].self_attn.q_proj.weight.add_(0.05)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM", init_lora_weights=False))
    adapter = out / "adapter"
    lora.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    if method == "lora":
        return adapter
    merged = load_model(str(base), adapter=adapter, merge=True)
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    return out / "merged"


@pytest.mark.parametrize("shape", ["qwen2", "llama3"])
@pytest.mark.parametrize("method", ["full", "merged", "lora"])
def test_the_serving_transformers_reads_what_the_trainer_writes(serving_python: Path, tmp_path: Path,
                                                                 shape: str, method: str) -> None:
    base = tiny_student(shape, tmp_path / "base")
    saved = save_like_the_trainer(base, method, tmp_path / "out")
    # vLLM serves a LoRA adapter on the base model it was trained on; merged and full outputs on their own.
    served = base if method == "lora" else saved
    here, there = read(sys.executable, served), read(serving_python, served)

    assert there["transformers"] == serving_pins()["transformers"] != here["transformers"]
    assert there["rope"] == here["rope"]
    assert there["rope"]["rope_theta"] == (1000000.0 if shape == "qwen2" else 500000.0)
    assert there["tokenizer"] == here["tokenizer"]
    assert there["template"] == here["template"] and there["template"]
    assert there["tokens"] == here["tokens"]
    if method == "lora":
        adapter = json.loads((saved / "adapter_config.json").read_text())
        assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
        assert (saved / "adapter_model.safetensors").exists()
