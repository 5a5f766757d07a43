"""The workspace PVC and the pipeline ConfigMap, created before any stage."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.pipeline import (
    CONFIG_FILE,
    JUDGE_API_KEY_ENV,
    TEACHER_API_KEY_ENV,
    JudgeClientConfig,
    PipelineConfig,
    TeacherClientConfig,
)
from distillery.api.spec import AccessMode, DistillationSpec
from distillery.resources.common import Names, Owner, metadata
from distillery.resources.vllm import VLLM_PORT


def workspace_pods(spec: DistillationSpec) -> int:
    """The most pods that mount the workspace at once. Stages run one after another, but within a stage the
    labeling shards, the training nodes and the serving replicas may each land on a different node."""
    serving = spec.serving.replicas if spec.serving.enabled else 0
    evaluator = 1 if spec.evaluation.enabled else 0
    return max(1, label_shards(spec), spec.student.nodes, serving, evaluator)


def workspace_access_modes(spec: DistillationSpec) -> list[str]:
    """ReadWriteOnce lets pods on one node share a volume; pods on several nodes need ReadWriteMany, or the
    second one waits forever on a Multi-Attach error."""
    if spec.storage.access_modes:
        return [m.value for m in spec.storage.access_modes]
    return [AccessMode.READ_WRITE_MANY.value if workspace_pods(spec) > 1 else AccessMode.READ_WRITE_ONCE.value]


def workspace_pvc(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    access_modes = workspace_access_modes(spec)
    pvc_spec: dict[str, Any] = {
        "accessModes": access_modes,
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    shared = AccessMode.READ_WRITE_MANY.value in access_modes
    storage_class = (spec.storage.storage_class_name or (shared and config.shared_storage_class_name)
                     or config.storage_class_name)
    if storage_class:
        pvc_spec["storageClassName"] = storage_class
    meta = metadata(owner, Names(owner.name).workspace, "workspace")
    # The workspace holds the user's labels and model: keep it if the operator's
    # own cleanup runs, but let the owner reference delete it with the Distillation.
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": pvc_spec}


def teacher_client(owner: Owner, spec: DistillationSpec) -> TeacherClientConfig:
    t = spec.teacher
    if t.endpoint is not None:
        base_url, model = t.endpoint.url.rstrip("/"), t.endpoint.model
    else:
        host = f"{Names(owner.name).teacher}.{owner.namespace}.svc"
        base_url, model = f"http://{host}:{VLLM_PORT}/v1", "teacher"
    return TeacherClientConfig(
        base_url=base_url,
        model=model,
        sampling=t.sampling,
        concurrency=t.concurrency,
        request_timeout_seconds=t.request_timeout_seconds,
        max_attempts=t.max_attempts,
        min_success_ratio=t.min_success_ratio,
        outage_budget_seconds=t.outage_budget_seconds,
    )


def judge_client(owner: Owner, spec: DistillationSpec) -> JudgeClientConfig | None:
    """evaluation.judge as the evaluator reaches it: the teacher's own address (and key), or its endpoint."""
    judge = spec.evaluation.judge
    if judge is None:
        return None
    if judge.endpoint is not None:
        base_url, model, key_env = judge.endpoint.url.rstrip("/"), judge.endpoint.model, JUDGE_API_KEY_ENV
    else:
        teacher = teacher_client(owner, spec)
        base_url, model, key_env = teacher.base_url, teacher.model, TEACHER_API_KEY_ENV
    return JudgeClientConfig(base_url=base_url, model=model, api_key_env=key_env, max_attempts=judge.max_attempts,
                             concurrency=judge.concurrency,
                             request_timeout_seconds=spec.teacher.request_timeout_seconds)


def label_shards(spec: DistillationSpec) -> int:
    """One labeling pod per teacher replica keeps every replica busy without overloading any."""
    return spec.teacher.replicas if spec.teacher.model else max(1, min(8, spec.teacher.concurrency // 64))


def pipeline_config(owner: Owner, spec: DistillationSpec) -> PipelineConfig:
    return PipelineConfig(
        name=owner.name,
        namespace=owner.namespace,
        task=spec.task,
        prompt=spec.prompt,
        teacher=teacher_client(owner, spec),
        dataset=spec.dataset,
        student=spec.student,
        evaluation=spec.evaluation,
        judge=judge_client(owner, spec),
        label_shards=label_shards(spec),
    )


def pipeline_configmap(owner: Owner, spec: DistillationSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, Names(owner.name).pipeline, "pipeline"),
        "data": {CONFIG_FILE: pipeline_config(owner, spec).to_json()},
    }
