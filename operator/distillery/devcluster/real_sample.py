"""The demo's real distillation: GSM8K rows, a pretrained teacher and a pretrained student from PyPI packages.

The teacher, Qwen2.5-Coder-0.5B-Instruct, runs its GGUF under llama.cpp in the teacher Deployment's pod (the
local kubelet runs it as `distillery serve`); the student, SmolLM2-135M-Instruct, is fine-tuned with LoRA on the
teacher's chain-of-thought labels. Both come from `distillery dev-cluster models` (devcluster/models.py). The
rows are GSM8K's (MIT), read from the project's shared data directory, not copied into the project.
"""

import json
import os
from pathlib import Path
from typing import Any

TEACHER_MODEL = "qwen2.5-coder-0.5b-instruct"
STUDENT_MODEL = "smollm2-135m-instruct"
GSM8K_ENV = "DISTILLERY_GSM8K"
"""A directory with GSM8K's train.jsonl and test.jsonl; default: ../shared/data/gsm8k beside the checkout."""


def gsm8k_dir() -> Path:
    default = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gsm8k"
    return Path(os.environ.get(GSM8K_ENV) or default).resolve()


def gsm8k_rows(split: str, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows offset..offset+count of GSM8K's `split` (train or test), in the file's order: a fixed sample."""
    path = gsm8k_dir() / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K's {split} split is not at {path}: set {GSM8K_ENV} to the directory with "
                                "train.jsonl and test.jsonl (openai/grade-school-math), or run the demo with "
                                "--models tiny")
    with open(path) as lines:
        rows = [json.loads(line) for _, line in zip(range(offset + count), lines, strict=False)]
    return rows[offset:]


def real_sample(train_rows: int = 16, validation_rows: int = 10, max_tokens: int = 512) -> dict[str, Any]:
    """A math Distillation sized for a 2-core CPU: a few minutes of teacher labeling, LoRA on the student.

    The teacher's chain-of-thought averages 270 tokens on GSM8K (LaTeX steps, now and then Python); at 320 a third
    of the rows were cut off (and rejected), at 512 one in 16. A small teacher still loses a few rows that way, so
    the sample accepts labeling with 75% of the rows (teacher.minSuccessRatio)."""
    return {
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "Distillation",
        "metadata": {"name": "gsm8k-demo", "namespace": "default"},
        "spec": {
            "task": "math",
            "region": "westus3",
            "teacher": {"model": f"pvc://models/{TEACHER_MODEL}", "gpuType": "H100", "gpus": 1,
                        # The local server generates one reply at a time: more requests in flight only wait, and
                        # one that waits past its timeout is asked again while the first is still generated.
                        "concurrency": 2, "minSuccessRatio": 0.75,
                        "sampling": {"maxTokens": max_tokens, "temperature": 0.0}},
            "dataset": {"train": {"rows": gsm8k_rows("train", train_rows)},
                        "validation": {"rows": gsm8k_rows("test", validation_rows)}},
            "student": {
                "model": f"pvc://models/{STUDENT_MODEL}", "gpuType": "H100", "gpusPerNode": 1, "epochs": 2,
                "batchSize": 4, "learningRate": 2e-4, "maxSeqLength": 512, "includeRationale": True,
                "lora": {"rank": 16, "alpha": 32, "dropout": 0.0,
                         "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            },
            "serving": {"gpuType": "H100", "gpus": 1},
        },
    }
