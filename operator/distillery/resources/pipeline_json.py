"""pipeline.json, the workloads' only input, and the pipeline ConfigMap that carries it: how the pods reach
the teachers and the judges, how many labeling shards run, and what the labels' fingerprint is made of."""

from typing import Any

from distillery.api.modelref import PVC_SCHEME
from distillery.api.pipeline import (
    CONFIG_FILE,
    JUDGE_API_KEY_ENV,
    TEACHER_API_KEY_ENV,
    JudgeClientConfig,
    PipelineConfig,
    TeacherClientConfig,
    teacher_api_key_env,
)
from distillery.api.spec import DistillationSpec, NamedTeacherSpec, TeacherEndpoint, TeacherSpec
from distillery.resources.common import Names, Owner, digest, metadata
from distillery.resources.teacher import SERVED_NAME, teacher_name
from distillery.resources.vllm import VLLM_PORT


def teacher_key_env(spec: DistillationSpec, t: NamedTeacherSpec) -> str:
    """The variable that holds an endpoint teacher's bearer token in the pods: TEACHER_API_KEY for a single
    teacher (its pipeline.json entry names none), one per name for several."""
    return teacher_api_key_env(t.name) if spec.several_teachers else TEACHER_API_KEY_ENV


def teacher_client(owner: Owner, spec: DistillationSpec, index: int = 0) -> TeacherClientConfig:
    """How the pods reach spec.teacher_list()[index]."""
    t = spec.teacher_list()[index]
    if t.endpoint is not None:
        base_url, model = t.endpoint.url.rstrip("/"), t.endpoint.model
    else:
        host = f"{teacher_name(owner, spec, index)}.{owner.namespace}.svc"
        base_url, model = f"http://{host}:{VLLM_PORT}/v1", SERVED_NAME
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
    if spec.several_teachers:
        client.name = t.name
        if t.endpoint is not None and t.endpoint.api_key_secret_ref is not None:
            client.api_key_env = teacher_key_env(spec, t)
    return client


def strategy_judge_client(owner: Owner, spec: DistillationSpec) -> TeacherClientConfig | None:
    """teacherStrategy.judge: one of the teachers (its own client) or an endpoint."""
    strategy = spec.teacher_strategy
    if strategy is None or strategy.judge is None:
        return None
    judge, members = strategy.judge, spec.teacher_list()
    if judge.teacher is not None:
        return teacher_client(owner, spec, [t.name for t in members].index(judge.teacher))
    endpoint: TeacherEndpoint | None = judge.endpoint
    assert endpoint is not None
    first = members[0]
    return TeacherClientConfig(
        base_url=endpoint.url.rstrip("/"), model=endpoint.model, name="judge",
        concurrency=max(t.concurrency for t in members),
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


def _teacher_identity(t: TeacherSpec) -> dict[str, Any]:
    model = {"model": t.model} if t.endpoint is None else {"endpoint": t.endpoint.url.rstrip("/"),
                                                           "model": t.endpoint.model}
    return {**model, "sampling": t.sampling.to_wire()}


def labels_fingerprint(spec: DistillationSpec) -> dict[str, str]:
    """What labels depend on, one digest per part (api.pipeline.FINGERPRINT_PARTS), so a refusal can say which
    part differs. The teacher is its model (or endpoint and model) and sampling, not where or on how many
    GPUs it runs; rows are the dataset's sources, columns, hold-out, generation and the validation cap (the
    labeling pod checks the rows themselves too, since a file behind a URI can change)."""
    members = spec.teacher_list()
    if not spec.several_teachers:
        teacher: dict[str, Any] = _teacher_identity(members[0])
    else:
        assert spec.teacher_strategy is not None
        # Several teachers: every one of them in order, and how their replies were combined.
        teacher = {"teachers": [{"name": t.name, **_teacher_identity(t)} for t in members],
                   "strategy": spec.teacher_strategy.to_wire()}
    d = spec.dataset
    rows = {**d.to_wire(), "evaluationMaxRows": spec.evaluation.max_rows}
    rows.pop("labelsFrom", None)
    return {
        "task": digest(spec.task.value),
        "teacher": digest(teacher),
        "prompt": digest(spec.prompt.to_wire()),
        "rows": digest(rows),
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
        teachers=([teacher_client(owner, spec, i) for i in range(len(spec.teacher_list()))]
                  if spec.several_teachers else None),
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
