"""The workspace PVC and the pipeline ConfigMap, created before any stage."""

import hashlib
import json
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.modelref import PVC_SCHEME
from distillery.api.pipeline import (
    CONFIG_FILE,
    JUDGE_API_KEY_ENV,
    JudgeClientConfig,
    PipelineConfig,
    TeacherClientConfig,
    teacher_api_key_env,
)
from distillery.api.spec import AccessMode, DistillationSpec, TeacherEndpoint, TeacherSpec
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


def teacher_client(owner: Owner, spec: DistillationSpec, index: int | None = None) -> TeacherClientConfig:
    """How the pods reach spec.teacher (index None) or spec.teachers[index]."""
    t: TeacherSpec
    if index is None:
        t = spec.primary_teacher
        service = Names(owner.name).teacher if spec.teachers is None else Names(owner.name).teacher_member(0)
    else:
        assert spec.teachers is not None
        t, service = spec.teachers[index], Names(owner.name).teacher_member(index)
    if t.endpoint is not None:
        base_url, model = t.endpoint.url.rstrip("/"), t.endpoint.model
    else:
        host = f"{service}.{owner.namespace}.svc"
        base_url, model = f"http://{host}:{VLLM_PORT}/v1", "teacher"
    client = TeacherClientConfig(
        base_url=base_url,
        model=model,
        sampling=t.sampling,
        concurrency=t.concurrency,
        request_timeout_seconds=t.request_timeout_seconds,
        max_attempts=t.max_attempts,
        min_success_ratio=t.min_success_ratio,
        outage_budget_seconds=t.outage_budget_seconds,
    )
    if spec.teachers is not None:
        name = spec.teachers[index or 0].name
        client.name = name
        if t.endpoint is not None and t.endpoint.api_key_secret_ref is not None:
            client.api_key_env = teacher_api_key_env(name)
    return client


def strategy_judge_client(owner: Owner, spec: DistillationSpec) -> TeacherClientConfig | None:
    """teacherStrategy.judge: one of the teachers (its own client) or an endpoint."""
    strategy = spec.teacher_strategy
    if strategy is None or strategy.judge is None or spec.teachers is None:
        return None
    judge = strategy.judge
    if judge.teacher is not None:
        return teacher_client(owner, spec, [t.name for t in spec.teachers].index(judge.teacher))
    endpoint: TeacherEndpoint | None = judge.endpoint
    assert endpoint is not None
    first = spec.teachers[0]
    return TeacherClientConfig(
        base_url=endpoint.url.rstrip("/"), model=endpoint.model, name="judge",
        concurrency=max(t.concurrency for t in spec.teachers),
        request_timeout_seconds=first.request_timeout_seconds, max_attempts=first.max_attempts,
        outage_budget_seconds=first.outage_budget_seconds,
        api_key_env=JUDGE_API_KEY_ENV if endpoint.api_key_secret_ref is not None else None,
    )


def _teacher_shards(t: TeacherSpec) -> int:
    return t.replicas if t.model else max(1, min(8, t.concurrency // 64))


def judge_client(owner: Owner, spec: DistillationSpec) -> JudgeClientConfig | None:
    """evaluation.judge as the evaluator reaches it: the teacher's own address (and key), or its endpoint."""
    judge = spec.evaluation.judge
    if judge is None:
        return None
    if judge.endpoint is not None:
        base_url, model = judge.endpoint.url.rstrip("/"), judge.endpoint.model
    else:
        teacher = teacher_client(owner, spec)
        base_url, model = teacher.base_url, teacher.model
    return JudgeClientConfig(base_url=base_url, model=model, max_attempts=judge.max_attempts,
                             concurrency=judge.concurrency,
                             request_timeout_seconds=spec.primary_teacher.request_timeout_seconds)


def label_shards(spec: DistillationSpec) -> int:
    """One labeling pod per teacher replica keeps every replica busy without overloading any; with several
    teachers, as many pods as the teacher that has the most replicas; one pod copies reused labels."""
    if spec.dataset.labels_from:
        return 1
    return max(_teacher_shards(t) for t in spec.teacher_list())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _teacher_identity(t: TeacherSpec) -> dict[str, Any]:
    model = {"model": t.model} if t.endpoint is None else {"endpoint": t.endpoint.url.rstrip("/"),
                                                           "model": t.endpoint.model}
    return {**model, "sampling": t.sampling.to_wire()}


def labels_fingerprint(spec: DistillationSpec) -> dict[str, str]:
    """What labels depend on, one digest per part (api.pipeline.FINGERPRINT_PARTS), so a refusal can say which
    part differs. The teacher is its model (or endpoint and model) and sampling, not where or on how many
    GPUs it runs; rows are the dataset's sources, columns, hold-out, generation and the validation cap (the
    labeling pod checks the rows themselves too, since a file behind a URI can change)."""
    if spec.teacher is not None:
        teacher: dict[str, Any] = _teacher_identity(spec.teacher)
    else:
        assert spec.teachers is not None and spec.teacher_strategy is not None
        # Several teachers: every one of them in order, and how their replies were combined.
        teacher = {"teachers": [{"name": t.name, **_teacher_identity(t)} for t in spec.teachers],
                   "strategy": spec.teacher_strategy.to_wire()}
    d = spec.dataset
    rows = {**d.to_wire(), "evaluationMaxRows": spec.evaluation.max_rows}
    rows.pop("labelsFrom", None)
    return {
        "task": _digest(spec.task.value),
        "teacher": _digest(teacher),
        "prompt": _digest(spec.prompt.to_wire()),
        "rows": _digest(rows),
    }


def labels_source_uri(spec: DistillationSpec) -> str | None:
    """The workspace whose labels `dataset.labelsFrom` reuses: a pvc:// path as given, or the named
    Distillation's workspace claim."""
    source = spec.dataset.labels_from
    if source is None or source.startswith(PVC_SCHEME):
        return source
    return f"{PVC_SCHEME}{Names(source).workspace}"


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
        teachers=([teacher_client(owner, spec, i) for i in range(len(spec.teachers))]
                  if spec.teachers is not None else None),
        teacher_strategy=spec.teacher_strategy.mode if spec.teacher_strategy is not None else None,
        strategy_judge=strategy_judge_client(owner, spec),
        labels_fingerprint=labels_fingerprint(spec),
        labels_from=labels_source_uri(spec),
    )


def pipeline_configmap(owner: Owner, spec: DistillationSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, Names(owner.name).pipeline, "pipeline"),
        "data": {CONFIG_FILE: pipeline_config(owner, spec).to_json()},
    }
