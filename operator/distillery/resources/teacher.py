"""The teacher: vLLM's OpenAI server as a Deployment + Service on GPU nodes in the region."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec, LossType
from distillery.resources.common import (
    TEACHER_LABEL,
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


def served_teachers(spec: DistillationSpec) -> list[int]:
    """Indexes into spec.teacher_list() of the teachers served in-cluster."""
    return [i for i, t in enumerate(spec.teacher_list()) if t.model]


def teacher_name(owner: Owner, spec: DistillationSpec, index: int) -> str:
    """The Deployment and Service of spec.teacher_list()[index]: `<name>-teacher` for a single teacher,
    `<name>-teacher-<index>` for one of several."""
    names = Names(owner.name)
    return names.teacher_member(index) if spec.several_teachers else names.teacher


def _member(manifest: dict[str, Any], spec: DistillationSpec, index: int, *paths: tuple[str, ...],
            ) -> dict[str, Any]:
    """Several teachers: their own label on the manifest and at `paths` (selectors, pod labels), so the
    Deployments' selectors do not overlap and each Service reaches only its teacher's pods."""
    if not spec.several_teachers:
        return manifest
    name = spec.teacher_list()[index].name
    for path in (("metadata", "labels"), *paths):
        node = manifest
        for key in path:
            node = node[key]
        node[TEACHER_LABEL] = name
    return manifest


def teacher_deployment(owner: Owner, spec: DistillationSpec, config: OperatorConfig, index: int = 0,
                       ) -> dict[str, Any]:
    """The vLLM Deployment of spec.teacher_list()[index]."""
    t = spec.teacher_list()[index]
    assert t.model is not None, "an endpoint teacher has no Deployment"
    served = teacher_vllm_args(model=t.model, served_model_name=SERVED_NAME,
                               tensor_parallel_size=t.tensor_parallel_size, extra_args=t.extra_args, port=VLLM_PORT,
                               max_logprobs=spec.student.loss.top_logprobs
                               if spec.student.loss.type == LossType.KD else None)
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
    deployment = server_deployment(owner, teacher_name(owner, spec, index), STAGE, t.replicas, pod_meta,
                                   gpu_placement(spec, config, t.gpu_type), container, volumes,
                                   server_pod_security_context(config, t.security_context), t.startup_seconds)
    return _member(deployment, spec, index, ("spec", "selector", "matchLabels"),
                   ("spec", "template", "metadata", "labels"))


def teacher_service(owner: Owner, spec: DistillationSpec, index: int = 0) -> dict[str, Any]:
    service = http_service(owner, teacher_name(owner, spec, index), STAGE, VLLM_PORT)
    return _member(service, spec, index, ("spec", "selector"))
