"""spec.teachers: validation (CEL rules that pydantic evaluates too), manifests, the pipeline contract and the
planner."""

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from distillery.api.crd import MAX_NAME_LENGTH, spec_schema
from distillery.api.pipeline import PipelineConfig, teacher_api_key_env
from distillery.api.spec import DistillationSpec
from distillery.api.status import DistillationStatus, Phase, StageState
from distillery.cli.status import render
from distillery.controller.observe import NodeView
from distillery.controller.planner import Create, Delete, gpu_pool_fits_all
from distillery.resources import jobs, pipeline_json, teacher
from distillery.resources.common import PARENT_LABEL, STAGE_LABEL, TEACHER_LABEL, Owner
from tests.unit.planner_world import A100, CONFIG, H100, OWNER, World, make_spec
from tests.unit.status_samples import SUCCEEDED

BIG = {"name": "big", "model": "meta-llama/Llama-3.3-70B-Instruct", "gpus": 4, "tensorParallelSize": 4}
OTHER = {"name": "other", "model": "Qwen/Qwen2.5-72B-Instruct", "gpus": 4, "tensorParallelSize": 4}
HOSTED = {"name": "hosted", "endpoint": {"url": "https://api.example.com/v1", "model": "gpt-x",
                                         "apiKeySecretRef": {"name": "keys", "key": "hosted"}}}


def several(members: list[dict[str, Any]] | None = None, strategy: dict[str, Any] | None = None,
            **overrides: Any) -> DistillationSpec:
    raw = make_spec().to_wire()
    del raw["teacher"]
    raw["teachers"] = members if members is not None else [BIG, OTHER]
    raw["teacherStrategy"] = strategy or {"mode": "vote"}
    raw.update(overrides)
    return DistillationSpec.model_validate(raw)


INVALID = [
    ("both teacher and teachers", lambda: DistillationSpec.model_validate(
        {**several().to_wire(), "teacher": {"model": "m"}}), "exactly one of teacher and teachers"),
    ("one teacher in teachers", lambda: several([BIG]), "at least 2"),
    ("five teachers", lambda: several([{**BIG, "name": f"t{i}"} for i in range(5)]), "at most 4"),
    ("duplicate names", lambda: several([BIG, {**OTHER, "name": "big"}]), "teachers[].name must be unique"),
    ("name with capitals", lambda: several([BIG, {**OTHER, "name": "Other"}]), "name"),
    ("no strategy", lambda: DistillationSpec.model_validate(
        {k: v for k, v in several().to_wire().items() if k != "teacherStrategy"}), "teacherStrategy is required"),
    ("strategy with one teacher", lambda: make_spec(teacherStrategy={"mode": "all"}), "teacherStrategy is required"),
    ("vote on conversation", lambda: several(task="conversation"), "mode vote needs a task with a checkable"),
    ("judge without judge", lambda: several(strategy={"mode": "judge"}), "teacherStrategy.judge is required"),
    ("judge naming no teacher", lambda: several(strategy={"mode": "judge", "judge": {"teacher": "nobody"}}),
     "judge.teacher must name one of teachers"),
    ("judge with teacher and endpoint", lambda: several(strategy={"mode": "judge", "judge": {
        "teacher": "big", "endpoint": {"url": "https://x.example/v1", "model": "j"}}}),
     "exactly one of teacherStrategy.judge.teacher"),
    ("a member with model and endpoint", lambda: several([BIG, {**OTHER, "endpoint": HOSTED["endpoint"]}]),
     "exactly one of teacher.model and teacher.endpoint"),
    ("logit distillation from several teachers", lambda: several(student={**make_spec().student.to_wire(),
                                                                          "loss": {"type": "kd"}}),
     "student.loss.type kd needs a single teacher"),
    ("the evaluation judged by several teachers", lambda: several(
        task="conversation", teacherStrategy={"mode": "all"}, evaluation={"judge": {"teacher": True}}),
     "evaluation.judge.teacher needs a single teacher"),
]


@pytest.mark.parametrize(("what", "build", "expected"), INVALID, ids=[i[0] for i in INVALID])
def test_bad_combinations_are_refused_naming_the_field(what: str, build: Any, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        build()
    assert expected in str(err.value), what


def test_every_teachers_rule_names_its_field() -> None:
    schema = spec_schema()
    rules = {r["message"]: r.get("fieldPath") for r in schema["x-kubernetes-validations"]}
    assert rules["exactly one of teacher and teachers must be set"] == ".teacher"
    assert rules["teachers[].name must be unique"] == ".teachers"
    assert rules["teacherStrategy is required with teachers and only valid with it"] == ".teacherStrategy"
    assert rules["teacherStrategy.judge.teacher must name one of teachers"] == ".teacherStrategy.judge.teacher"
    assert next(path for message, path in rules.items()
                if message.startswith("student.loss.type kd needs a single teacher")) == ".student.loss.type"
    assert next(path for message, path in rules.items()
                if message.startswith("evaluation.judge.teacher needs a single")) == ".evaluation.judge.teacher"
    assert any(path == ".teacherStrategy.mode" and "vote" in message for message, path in rules.items())
    members = schema["properties"]["teachers"]
    assert (members["minItems"], members["maxItems"]) == (2, 4)
    assert members["items"]["required"] == ["name"]
    strategy = schema["properties"]["teacherStrategy"]
    assert strategy["properties"]["mode"]["enum"] == ["vote", "judge", "all"]


def test_judge_and_all_are_accepted_for_open_ended_tasks() -> None:
    assert several(strategy={"mode": "judge", "judge": {"teacher": "other"}}, task="conversation")
    assert several(strategy={"mode": "all"}, task="summarization")
    assert several(strategy={"mode": "judge", "judge": {"endpoint": {"url": "https://j.example/v1",
                                                                      "model": "judge"}}}, task="conversation")


def test_each_in_cluster_teacher_has_its_own_deployment_and_service_within_the_name_limits() -> None:
    spec = several([BIG, HOSTED, {**OTHER, "gpuType": "A100", "replicas": 2}])
    longest = Owner("a" * MAX_NAME_LENGTH, "ns", "uid")
    assert teacher.served_teachers(spec) == [0, 2]
    for i in (0, 2):
        deployment = teacher.teacher_deployment(longest, spec, CONFIG, i)
        service = teacher.teacher_service(longest, spec, i)
        name = spec.teachers[i].name  # type: ignore[index]
        assert deployment["metadata"]["name"] == service["metadata"]["name"] == f"{longest.name}-teacher-{i}"
        assert len(service["metadata"]["name"]) <= 63
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[TEACHER_LABEL] == name
        assert deployment["spec"]["template"]["metadata"]["labels"][TEACHER_LABEL] == name
        assert service["spec"]["selector"] == {**selector, "app.kubernetes.io/component": "teacher"} | selector
        assert service["spec"]["selector"][TEACHER_LABEL] == name
    other = teacher.teacher_deployment(OWNER, spec, CONFIG, 2)
    assert other["spec"]["replicas"] == 2 and "Qwen/Qwen2.5-72B-Instruct" in other["spec"]["template"]["spec"][
        "containers"][0]["args"]


def test_a_single_teacher_renders_what_it_always_did() -> None:
    spec = make_spec()
    deployment = teacher.teacher_deployment(OWNER, spec, CONFIG)
    assert deployment["metadata"]["name"] == "demo-teacher"
    assert TEACHER_LABEL not in deployment["spec"]["selector"]["matchLabels"]
    assert teacher.teacher_service(OWNER, spec)["metadata"]["name"] == "demo-teacher"
    pipeline = json.loads(pipeline_json.pipeline_configmap(OWNER, spec)["data"]["pipeline.json"])
    assert {"teachers", "teacherStrategy", "judge"}.isdisjoint(pipeline)
    assert set(pipeline["teacher"]) == {"baseUrl", "model", "sampling", "concurrency", "requestTimeoutSeconds",
                                        "maxAttempts", "minSuccessRatio", "outageBudgetSeconds"}


def test_the_pipeline_lists_every_teacher_its_key_and_the_judge() -> None:
    spec = several([BIG, HOSTED], {"mode": "judge", "judge": {"teacher": "hosted"}}, task="conversation")
    cfg = PipelineConfig.model_validate_json(pipeline_json.pipeline_config(OWNER, spec).to_json())
    assert cfg.teachers is not None and [t.name for t in cfg.teachers] == ["big", "hosted"]
    assert cfg.teachers[0].base_url == "http://demo-teacher-0.team-a.svc:8000/v1"
    assert cfg.teachers[1].base_url == "https://api.example.com/v1" and cfg.teachers[1].model == "gpt-x"
    assert cfg.teachers[1].api_key_env == teacher_api_key_env("hosted") == "TEACHER_API_KEY_HOSTED"
    assert cfg.teacher == cfg.teachers[0]
    assert cfg.strategy_judge == cfg.teachers[1] and cfg.teacher_strategy == "judge"
    assert cfg.label_shards == 1
    env = jobs.labeling_job(OWNER, spec, CONFIG)["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == "TEACHER_API_KEY_HOSTED")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "keys", "key": "hosted"}


def test_capacity_counts_all_teachers_together() -> None:
    one_node = (H100,)
    demands = [("H100", 4, 1), ("H100", 4, 1)]
    assert gpu_pool_fits_all(one_node, CONFIG, "westus3", demands)
    assert not gpu_pool_fits_all(one_node, CONFIG, "westus3", [*demands, ("H100", 1, 1)])
    assert gpu_pool_fits_all((H100, H100), CONFIG, "westus3", [("H100", 8, 1), ("H100", 4, 2)])
    assert not gpu_pool_fits_all((H100, A100), CONFIG, "westus3", [("H100", 4, 1), ("A100", 4, 1)]), \
        "the A100 node is in another region"
    eu = NodeView(labels={**A100.labels, "topology.kubernetes.io/region": "westus3"}, allocatable_gpus=8)
    assert gpu_pool_fits_all((H100, eu), CONFIG, "westus3", [("H100", 8, 1), ("A100", 8, 1)])


def test_teachers_wait_together_when_the_pool_cannot_hold_them_all() -> None:
    w = World(several([BIG, {**OTHER, "gpus": 8, "tensorParallelSize": 8}]), nodes=(H100,))
    result = w.step()
    assert not any(isinstance(a, Create) and a.manifest["kind"] == "Deployment" for a in result.actions)
    record = w.status.stages["teacher"]
    assert record.state == StageState.WAITING
    assert "big: 1 pod(s) with 4x H100" in (record.message or "") and "other: 1 pod(s) with 8x H100" in (
        record.message or "")
    assert w.reason("TeacherReady") == "NoMatchingGPUNodePool"
    w.nodes = (H100, H100)
    w.step()
    assert w.has("Deployment", "demo-teacher-0") and w.has("Deployment", "demo-teacher-1")


def test_teachers_start_together_label_when_all_serve_and_are_removed_together() -> None:
    w = World(several([BIG, HOSTED, OTHER]), nodes=(H100, H100))
    w.step()
    for name in ("demo-teacher-0", "demo-teacher-2"):
        assert w.has("Deployment", name) and w.has("Service", name)
    assert not w.has("Deployment", "demo-teacher-1"), "an endpoint teacher has no server"
    w.make_available("demo-teacher-0")
    w.step()
    assert not w.has("Job", "demo-label"), "labeling waits for every teacher"
    assert "other" in (w.status.stages["teacher"].message or "")
    w.make_available("demo-teacher-2")
    w.step()
    assert w.status.stages["teacher"].state == StageState.SUCCEEDED and w.has("Job", "demo-label")
    summary = {"rows_ok": 9, "rows_rejected": 1, "rows_total": 10, "tokens_in": 300, "tokens_out": 90,
               "rows_disagreed": 3}
    for name, (answered, agreed, out) in {"big": (9, 8, 30), "hosted": (10, 7, 30), "other": (9, 9, 30)}.items():
        summary |= {f"teacher.{name}.answered": answered, f"teacher.{name}.agreed": agreed,
                    f"teacher.{name}.tokens_in": 100, f"teacher.{name}.tokens_out": out}
    w.complete_job("demo-label", json.dumps(summary), "labeling")
    result = w.step(minutes=60)
    deleted = {(a.kind, a.name) for a in result.actions if isinstance(a, Delete)}
    assert deleted == {("Deployment", "demo-teacher-0"), ("Service", "demo-teacher-0"),
                       ("Deployment", "demo-teacher-2"), ("Service", "demo-teacher-2")}
    w.step()
    assert w.status.stages["teacher"].state == StageState.REMOVED
    assert w.status.progress is not None and w.status.progress.rows_disagreed == 3
    stats = {s.name: s for s in w.status.teachers or []}
    assert list(stats) == ["big", "hosted", "other"]
    assert (stats["big"].rows_answered, stats["big"].rows_agreed, stats["big"].agreement_rate) == (9, 8, 0.8889)
    assert stats["hosted"].agreement_rate == 0.7 and stats["hosted"].gpu_hours is None
    hours = w.status.stages["teacher"].gpu_hours
    assert hours is not None
    assert stats["big"].gpu_hours == stats["other"].gpu_hours == pytest.approx(hours / 2, abs=1e-3)
    assert stats["big"].tokens_in == 100 and stats["other"].tokens_out == 30


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_several_teachers_whose_status_is_never_written_still_end_their_stage(keep: bool) -> None:
    """As for one teacher: passes that plan from an empty status (their writes lost to restarts) still end the
    teacher stage once labeling is over, removed or kept."""
    w = World(several([{**BIG, "keepAfterLabeling": keep}, {**OTHER, "keepAfterLabeling": keep}]),
              nodes=(H100, H100))
    w.step()
    for name in ("demo-teacher-0", "demo-teacher-1"):
        w.make_available(name)
    w.step()
    w.complete_job("demo-label")
    w.status = DistillationStatus()
    w.step()
    w.status = DistillationStatus()
    w.step()
    assert w.has("Deployment", "demo-teacher-0") == keep
    assert w.status.stages["teacher"].state == (StageState.SUCCEEDED if keep else StageState.REMOVED)
    assert w.status.phase == Phase.TRAINING


def test_suspend_removes_every_teacher_and_resume_starts_them_again() -> None:
    w = World(several(), nodes=(H100,))
    w.step()
    w.spec = w.spec.model_copy(update={"suspend": True})
    result = w.step()
    assert {a.name for a in result.actions if isinstance(a, Delete)} == {"demo-teacher-0", "demo-teacher-1"}
    w.spec = w.spec.model_copy(update={"suspend": False})
    w.step()
    assert w.has("Deployment", "demo-teacher-0") and w.has("Deployment", "demo-teacher-1")


def test_live_labeling_reports_fill_per_teacher_status() -> None:
    w = World(several(), nodes=(H100,))
    w.step()
    w.make_available("demo-teacher-0")
    w.make_available("demo-teacher-1")
    w.step()
    w.children[("ConfigMap", "demo-progress")] = {
        "kind": "ConfigMap", "metadata": {"name": "demo-progress", "labels": {PARENT_LABEL: "demo",
                                                                             STAGE_LABEL: "progress"}},
        "data": {f"labeling-0000{i}": json.dumps({"rows_ok": 2, "rows_total": 5, "rows_disagreed": 1,
                                                  "teacher.big.answered": 2, "teacher.big.agreed": 1})
                 for i in range(2)}}
    w.step()
    stats = {s.name: s for s in w.status.teachers or []}
    assert (stats["big"].rows_answered, stats["big"].rows_agreed, stats["big"].agreement_rate) == (4, 2, 0.5)
    assert stats["other"].rows_answered == 0 and stats["other"].agreement_rate is None
    assert w.status.progress is not None and w.status.progress.rows_disagreed == 2


def test_distillery_status_shows_each_teacher_and_the_disagreements() -> None:
    obj = copy.deepcopy(SUCCEEDED)
    del obj["spec"]["teacher"]
    obj["spec"]["teachers"] = [BIG, HOSTED]
    obj["spec"]["teacherStrategy"] = {"mode": "judge", "judge": {"teacher": "big"}}
    obj["status"]["progress"]["rowsDisagreed"] = 17
    obj["status"]["teachers"] = [
        {"name": "big", "rowsAnswered": 990, "rowsAgreed": 950, "agreementRate": 0.9596, "tokensIn": 120000,
         "tokensOut": 45000, "gpuHours": 3.5},
        {"name": "hosted", "rowsAnswered": 1000, "rowsAgreed": 900, "agreementRate": 0.9, "tokensIn": 121000,
         "tokensOut": 51000}]
    text = render(obj)
    assert "Teachers:   2, strategy judge by big" in text
    assert "    big: meta-llama/Llama-3.3-70B-Instruct on 4x H100, tensor parallel 4" in text
    assert "    hosted: gpt-x at https://api.example.com/v1" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("TEACHER"))
    assert header.split() == ["TEACHER", "ANSWERED", "AGREED", "AGREEMENT", "TOKENS", "IN", "TOKENS", "OUT",
                              "GPU-HOURS"]
    assert next(line for line in lines if line.strip().startswith("big ")).split() == [
        "big", "990", "950", "96.0%", "120,000", "45,000", "3.50"]
    assert next(line for line in lines if line.strip().startswith("hosted ")).split()[-1] == "-"
    assert "rows where the teachers disagreed: 17" in text


def test_labels_of_several_teachers_are_fingerprinted_teacher_by_teacher_and_with_the_strategy() -> None:
    base = pipeline_json.labels_fingerprint(several())
    assert pipeline_json.labels_fingerprint(several()) == base
    other_model = several([BIG, {**OTHER, "model": "mistralai/Mistral-Large-Instruct-2411"}])
    swapped = several([OTHER, BIG])
    judged = several(strategy={"mode": "all"})
    for spec in (other_model, swapped, judged):
        changed = pipeline_json.labels_fingerprint(spec)
        assert changed["teacher"] != base["teacher"]
        assert {k: v for k, v in changed.items() if k != "teacher"} == {k: v for k, v in base.items() if k != "teacher"}
    assert pipeline_json.labels_fingerprint(make_spec())["teacher"] != base["teacher"]


def test_reused_labels_start_none_of_several_teachers() -> None:
    source = several()
    w = World(several(dataset={**source.dataset.to_wire(), "labelsFrom": "first"}))
    w.labels_source = {"metadata": {"name": "first"}, "status": {"labels": {
        "fingerprint": pipeline_json.labels_fingerprint(source), "rows": 100}}}
    w.step()
    w.step()
    assert not [name for kind, name in w.children if kind == "Deployment"]
    assert w.status.stages["teacher"].state == StageState.SKIPPED and w.reason("TeacherReady") == "LabelsReused"
    assert w.has("Job", "demo-label") and w.children[("Job", "demo-label")]["spec"]["completions"] == 1
