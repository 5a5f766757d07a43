"""vLLM container arguments and environment for the teacher and student Deployments.

Pure: the manifest builders call these; nothing here imports torch or transformers.
"""

from collections.abc import Sequence
from typing import Any

from distillery.api.modelref import is_local_ref, resolve_model_ref

VLLM_PORT = 8000
"""The port the teacher and student servers listen on, and their Services expose."""


def teacher_vllm_args(*, model: str, served_model_name: str, tensor_parallel_size: int = 1,
                      extra_args: Sequence[str] = (), port: int = VLLM_PORT,
                      max_logprobs: int | None = None) -> dict[str, Any]:
    """Arguments and environment for the `vllm/vllm-openai` image serving a teacher.

    `model` is a spec reference (hub id, hf://, pvc://). `extra_args` come last so a user's
    flag overrides ours (vLLM's argparse keeps the last value). A hub token, if any, is the
    manifest's to add as a secretKeyRef env (HF_TOKEN); it is not a plain value.
    `max_logprobs` (logit distillation's top_logprobs) is passed as --max-logprobs: vLLM refuses a request
    asking for more than that many (its default, 20, is the OpenAI bound too; stating it keeps the labeler's k
    and the server's limit one value). Returns {"args": [...], "env": [{"name", "value"}, ...]}.
    """
    logprobs = ["--max-logprobs", str(max_logprobs)] if max_logprobs is not None else []
    # `vllm serve` takes the model positionally; its --model option is deprecated and slated for removal.
    args = [
        resolve_model_ref(model),
        "--served-model-name", served_model_name,
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--host", "0.0.0.0",
        "--port", str(port),
        *logprobs,
        *extra_args,
    ]
    return {"args": args, "env": _vllm_env(model)}


def student_vllm_args(*, base_model: str, served_model_name: str, adapter_path: str | None = None,
                      merged_path: str | None = None, lora_rank: int = 16, gpus: int = 1,
                      extra_args: Sequence[str] = (), port: int = VLLM_PORT) -> dict[str, Any]:
    """Arguments and environment for the `vllm/vllm-openai` image serving the distilled student.

    With `merged_path` (student.mergeWeights, or a full fine-tune's model directory) vLLM serves
    that directory under `served_model_name`. Otherwise it serves `base_model` with the LoRA
    adapter at `adapter_path` registered as `served_model_name`; requests must name it to get
    the adapter. `lora_rank` must be at least the adapter's rank (vLLM's --max-lora-rank).
    `gpus` is the tensor-parallel size. Returns {"args": [...], "env": [...]}.
    """
    if (adapter_path is None) == (merged_path is None):
        raise ValueError("exactly one of adapter_path and merged_path must be given")
    tp = ["--tensor-parallel-size", str(max(gpus, 1))]
    common = ["--host", "0.0.0.0", "--port", str(port)]
    if merged_path is not None:
        args = [merged_path, "--served-model-name", served_model_name, *tp, *common]
    else:
        args = [
            resolve_model_ref(base_model),
            "--enable-lora",
            "--lora-modules", f"{served_model_name}={adapter_path}",
            "--max-lora-rank", str(_vllm_lora_rank(lora_rank)),
            *tp, *common,
        ]
    return {"args": [*args, *extra_args], "env": _vllm_env(merged_path or base_model)}


def _vllm_lora_rank(rank: int) -> int:
    """vLLM accepts only these --max-lora-rank values; take the smallest that fits."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512); merge the weights")


def _vllm_env(model: str) -> list[dict[str, str]]:
    if is_local_ref(model):
        # Weights are on a volume: never let a missing file turn into a hub download.
        return [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    return []
