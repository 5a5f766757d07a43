"""The teacher: vLLM's OpenAI server as a Deployment + Service on GPU nodes in the region."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
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
)
from distillery.resources.vllm import VLLM_PORT, teacher_vllm_args

STAGE = "teacher"
SERVED_NAME = "teacher"
"""The model name the labeler sends; independent of the model id so the pipeline config never changes."""


def teacher_deployment(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    t = spec.teacher
    assert t.model is not None, "an endpoint teacher has no Deployment"
    served = teacher_vllm_args(model=t.model, served_model_name=SERVED_NAME,
                               tensor_parallel_size=t.tensor_parallel_size, extra_args=t.extra_args, port=VLLM_PORT)
    hub_env, cache_volumes, cache_mounts = hub_access(spec, t.hub_token_secret_ref, endpoint=config.hub_endpoint)
    env: list[dict[str, Any]] = [*served["env"], *hub_env]
    volumes, mounts = pvc_source_volumes(t.model)
    volumes += cache_volumes
    mounts += cache_mounts
    # vLLM needs shared memory for tensor-parallel workers.
    volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
    mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    pod_meta = pod_metadata(owner, STAGE, spec, config)
    container = {
        "name": "vllm",
        "image": t.image or config.vllm_image,
        "args": served["args"],
        "env": env,
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        "resources": gpu_resources(config, t.gpus, cpu=str(4 * t.gpus), memory=f"{32 * t.gpus}Gi"),
        **server_probes(t.startup_seconds),
        "volumeMounts": mounts,
    }
    return server_deployment(owner, Names(owner.name).teacher, STAGE, t.replicas, pod_meta,
                             gpu_placement(spec, config, t.gpu_type), container, volumes,
                             server_pod_security_context(config, t.security_context), t.startup_seconds)


def teacher_service(owner: Owner) -> dict[str, Any]:
    return http_service(owner, Names(owner.name).teacher, STAGE, VLLM_PORT)
