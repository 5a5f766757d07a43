"""vLLM container arguments for the teacher and the student: pure functions the manifests call."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.workloads.serve import pvc_claim, resolve_model_ref, student_vllm_args, teacher_vllm_args


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_teacher_from_the_hub_with_tensor_parallelism_and_extra_args() -> None:
    spec = teacher_vllm_args(model="meta-llama/Llama-3.3-70B-Instruct", served_model_name="teacher",
                             tensor_parallel_size=4, extra_args=["--max-model-len", "8192"])
    args = spec["args"]
    assert flag(args, "--model") == "meta-llama/Llama-3.3-70B-Instruct"
    assert flag(args, "--served-model-name") == "teacher"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--port") == "8000" and flag(args, "--host") == "0.0.0.0"
    assert args[-2:] == ["--max-model-len", "8192"]  # last, so a user's flag wins
    assert spec["env"] == []


def test_teacher_on_a_volume_is_read_offline() -> None:
    spec = teacher_vllm_args(model="pvc://models/llama-70b", served_model_name="t", pvc_base="/mnt/pvc")
    assert flag(spec["args"], "--model") == "/mnt/pvc/models/llama-70b"
    assert spec["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]


def test_student_base_with_lora_adapter() -> None:
    spec = student_vllm_args(base_model="hf://Qwen/Qwen2.5-1.5B-Instruct", served_model_name="sentiment",
                             adapter_path="/workspace/train/adapter", lora_rank=12, gpus=2)
    args = spec["args"]
    assert flag(args, "--model") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "--enable-lora" in args
    assert flag(args, "--lora-modules") == "sentiment=/workspace/train/adapter"
    assert flag(args, "--max-lora-rank") == "16"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert "--served-model-name" not in args  # requests name the adapter to get it


def test_student_merged_weights() -> None:
    spec = student_vllm_args(base_model="Qwen/Qwen2.5-1.5B-Instruct", served_model_name="s",
                             merged_path="/workspace/train/merged", gpus=0, extra_args=["--dtype", "float32"])
    args = spec["args"]
    assert flag(args, "--model") == "/workspace/train/merged" and flag(args, "--served-model-name") == "s"
    assert "--enable-lora" not in args and flag(args, "--tensor-parallel-size") == "1"
    assert args[-2:] == ["--dtype", "float32"]
    assert spec["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]


@pytest.mark.parametrize("paths", [{}, {"adapter_path": "/a", "merged_path": "/m"}])
def test_student_needs_exactly_one_of_adapter_and_merged(paths: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        student_vllm_args(base_model="m", served_model_name="s", **paths)


def test_lora_rank_above_vllm_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="512"):
        student_vllm_args(base_model="m", served_model_name="s", adapter_path="/a", lora_rank=1024)


def test_model_refs() -> None:
    assert resolve_model_ref("pvc://models/qwen/1.5b") == "/mnt/pvc/models/qwen/1.5b"
    assert resolve_model_ref("hf://Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert resolve_model_ref("/data/model") == "/data/model"
    assert pvc_claim("pvc://models/qwen") == "models" and pvc_claim("Qwen/Qwen2.5") is None


def test_importing_the_module_loads_no_ml_library() -> None:
    code = ("import sys, distillery.workloads.serve; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'deepspeed') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
