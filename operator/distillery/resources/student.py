"""The distilled student behind an OpenAI-compatible API: Deployment + Service."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.pipeline import WorkspaceLayout
from distillery.api.spec import DistillationSpec, TrainingMethod
from distillery.resources.common import (
    Names,
    Owner,
    gpu_placement,
    gpu_resources,
    http_service,
    hub_access,
    pod_metadata,
    pvc_source_volumes,
    server_deployment,
    server_pod_security_context,
    server_probes,
    workspace_volume,
)
from distillery.resources.vllm import VLLM_PORT, student_vllm_args

STAGE = "serving"
SERVED_NAME = "student"
PERSONA_TEMPLATE_FILE = "chat_template.jinja"
"""Where transformers' save_pretrained writes a tokenizer's chat template, beside the trainer's adapter."""


def student_endpoint(owner: Owner) -> str:
    return f"http://{Names(owner.name).student}.{owner.namespace}.svc:{VLLM_PORT}/v1"


def student_deployment(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    sv, st = spec.serving, spec.student
    layout = WorkspaceLayout()
    names = Names(owner.name)
    # A full fine-tune writes the whole model where a LoRA run writes its adapter.
    if st.method == TrainingMethod.FULL:
        served = student_vllm_args(base_model=st.model, served_model_name=SERVED_NAME,
                                   merged_path=str(layout.adapter_dir), gpus=sv.gpus, port=VLLM_PORT)
    elif st.merge_weights:
        served = student_vllm_args(base_model=st.model, served_model_name=SERVED_NAME,
                                   merged_path=str(layout.merged_dir), gpus=sv.gpus, port=VLLM_PORT)
    else:
        served = student_vllm_args(base_model=st.model, served_model_name=SERVED_NAME,
                                   adapter_path=str(layout.adapter_dir), lora_rank=st.lora.rank, gpus=sv.gpus,
                                   port=VLLM_PORT)
    if spec.prompt.persona is not None:
        # vLLM renders prompts with --chat-template before the served model's own tokenizer template, and for
        # a LoRA adapter that would be the base model's: the trainer's template carries the persona.
        served["args"] += ["--chat-template", str(layout.adapter_dir / PERSONA_TEMPLATE_FILE)]
    ws_vol, ws_mount = workspace_volume(names)
    ws_mount = {**ws_mount, "readOnly": True}
    src_vols, src_mounts = pvc_source_volumes(st.model)
    hub_env, cache_volumes, cache_mounts = hub_access(spec, endpoint=config.hub_endpoint)
    pod_meta = pod_metadata(owner, STAGE, spec, config)
    container = {
        "name": "vllm",
        "image": sv.image or config.vllm_image,
        "args": served["args"],
        "env": [*served["env"], *hub_env],
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        "resources": gpu_resources(config, sv.gpus, cpu=str(max(2, 4 * sv.gpus)), memory=f"{max(8, 32 * sv.gpus)}Gi"),
        **server_probes(sv.startup_seconds),
        "volumeMounts": [ws_mount, *src_mounts, *cache_mounts],
    }
    return server_deployment(owner, names.student, STAGE, 0 if spec.suspend else sv.replicas, pod_meta,
                             gpu_placement(spec, config, sv.gpu_type if sv.gpus else None), container,
                             [ws_vol, *src_vols, *cache_volumes],
                             server_pod_security_context(config, sv.security_context), sv.startup_seconds)


def student_service(owner: Owner) -> dict[str, Any]:
    return http_service(owner, Names(owner.name).student, STAGE, VLLM_PORT)
