"""Loading the student (or any causal LM) from a model reference, with a LoRA adapter when asked.

The trainer, the evaluator and the CPU server share it; errors say what to fix (a volume that is not
mounted, a gated hub model without a token, LoRA target modules the model does not have).
"""

import os
from pathlib import Path
from typing import Any

import torch

from distillery.api.modelref import is_local_ref, resolve_model_ref
from distillery.api.spec import StudentSpec, TrainingMethod
from distillery.workloads.environment import pvc_base


class ModelLoadError(RuntimeError):
    """The student model (or adapter) cannot be loaded; the message says what to fix."""


def resolve_local_model(ref: str) -> str:
    """Where `ref` is on this machine (a pvc:// reference under the pod's mounts), or the hub id itself."""
    location = resolve_model_ref(ref, pvc_base())
    if is_local_ref(ref) and not Path(location).exists():
        raise ModelLoadError(f"model {ref!r}: {location} does not exist (is its volume mounted?)")
    return location


def _hub_hint(ref: str, err: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError

    if isinstance(err.__cause__, GatedRepoError) or isinstance(err, GatedRepoError):
        status = getattr(getattr(err.__cause__ or err, "response", None), "status_code", "401")
        return ModelLoadError(f"model {ref!r} is gated on the hub and the hub refused it ({status}, "
                              f"{'no token' if not os.environ.get('HF_TOKEN') else 'the token has no access'}): set "
                              f"spec.hubTokenSecretRef to a Secret holding a token with access to it. Cause: {err}")
    if is_local_ref(ref):
        return ModelLoadError(f"model {ref!r} cannot be loaded from {resolve_model_ref(ref, pvc_base())}: {err}")
    return ModelLoadError(f"model {ref!r} cannot be loaded from the hub (offline, gated or not found?); copy it "
                          f"to a volume and use pvc://claim/path, or set HF_TOKEN for a gated model. Cause: {err}")


def load_tokenizer(ref: str) -> Any:
    """The model's tokenizer, with a pad token (the eos token when it has none) for batching."""
    from transformers import AutoTokenizer

    location = resolve_local_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise _hub_hint(ref, err) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: str, *, dtype: torch.dtype = torch.float32, adapter: str | Path | None = None,
               merge: bool = False) -> Any:
    """A causal LM from a model reference (local path, pvc://, hf:// or hub id), optionally with a
    LoRA adapter directory on top (merged into the weights when `merge`)."""
    from transformers import AutoModelForCausalLM

    location = resolve_local_model(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    except (OSError, ValueError) as err:
        raise _hub_hint(ref, err) from err
    if adapter is None:
        return model
    from peft import PeftModel

    if not Path(adapter, "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    adapted = PeftModel.from_pretrained(model, str(adapter))
    return adapted.merge_and_unload() if merge else adapted


def prepare_model(model: Any, student: StudentSpec) -> Any:
    """LoRA adapters on the target modules (only they train), or every weight for full fine-tuning."""
    if student.method == TrainingMethod.FULL:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = student.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if "." in name})
        raise ModelLoadError(f"student.lora.targetModules {lora.target_modules} do not match the model: "
                             f"{err}; its module names include {names[:40]}") from err
