"""vLLM container arguments for the teacher and the student: pure functions the manifests call."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.api.modelref import pvc_claims, pvc_parts, resolve_model_ref
from distillery.resources.vllm import student_vllm_args, teacher_vllm_args


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_teacher_from_the_hub_with_tensor_parallelism_and_extra_args() -> None:
    spec = teacher_vllm_args(model="meta-llama/Llama-3.3-70B-Instruct", served_model_name="teacher",
                             tensor_parallel_size=4, extra_args=["--max-model-len", "8192"])
    args = spec["args"]
    assert args[0] == "meta-llama/Llama-3.3-70B-Instruct"
    assert flag(args, "--served-model-name") == "teacher"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--port") == "8000" and flag(args, "--host") == "0.0.0.0"
    assert args[-2:] == ["--max-model-len", "8192"]  # last, so a user's flag wins
    assert spec["env"] == []


def test_teacher_on_a_volume_is_read_offline() -> None:
    spec = teacher_vllm_args(model="pvc://models/llama-70b", served_model_name="t")
    assert spec["args"][0] == "/mnt/pvc/models/llama-70b"
    assert spec["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]


def test_student_base_with_lora_adapter() -> None:
    spec = student_vllm_args(base_model="hf://Qwen/Qwen2.5-1.5B-Instruct", served_model_name="sentiment",
                             adapter_path="/workspace/train/adapter", lora_rank=12, gpus=2)
    args = spec["args"]
    assert args[0] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "--enable-lora" in args
    assert flag(args, "--lora-modules") == "sentiment=/workspace/train/adapter"
    assert flag(args, "--max-lora-rank") == "16"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert "--served-model-name" not in args  # requests name the adapter to get it


def test_student_merged_weights() -> None:
    spec = student_vllm_args(base_model="Qwen/Qwen2.5-1.5B-Instruct", served_model_name="s",
                             merged_path="/workspace/train/merged", gpus=0, extra_args=["--dtype", "float32"])
    args = spec["args"]
    assert args[0] == "/workspace/train/merged" and flag(args, "--served-model-name") == "s"
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
    assert resolve_model_ref("pvc://models/qwen", pvc_base="/tmp/pvc") == "/tmp/pvc/models/qwen"
    assert pvc_parts("pvc://models/qwen/1.5b") == ("models", "qwen/1.5b") and pvc_parts("Qwen/Qwen2.5") is None
    assert pvc_claims("pvc://a/x", None, "hf://o/n", "pvc://b/y", "pvc://a/z") == ["a", "b"]


def test_the_operator_loads_no_ml_library() -> None:
    code = ("import sys, distillery.controller.main; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'deepspeed') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_the_operators_environment_does_not_change_its_manifests() -> None:
    """Only pod programs may read DISTILLERY_PVC_BASE; the manifests mount claims at the contract's root."""
    code = ("import json; from distillery.resources.vllm import teacher_vllm_args; "
            "from distillery.resources.common import pvc_source_volumes; "
            "print(json.dumps([teacher_vllm_args(model='pvc://m/x', served_model_name='t')['args'], "
            "pvc_source_volumes('pvc://m/x')[1][0]['mountPath']]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator"),
           "DISTILLERY_PVC_BASE": "/elsewhere", "DISTILLERY_WORKSPACE": "/elsewhere"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    args, mount = json.loads(out.stdout)
    assert args[0] == "/mnt/pvc/m/x" and mount == "/mnt/pvc/m"


def test_logit_distillation_states_the_teachers_logprobs_limit_before_user_flags() -> None:
    args = teacher_vllm_args(model="Qwen/Qwen2.5-72B-Instruct", served_model_name="teacher", max_logprobs=8,
                             extra_args=["--max-logprobs", "20"])["args"]
    assert flag(args, "--max-logprobs") == "8" and args[-2:] == ["--max-logprobs", "20"]
    assert "--max-logprobs" not in teacher_vllm_args(model="m", served_model_name="t")["args"]
