"""`kubectl apply` itself rejects a wrong Distillation, with a message naming the field."""

import copy
import json
from typing import Any

import pytest

from distillery.api.config import OperatorConfig
from distillery.api.crd import MAX_NAME_LENGTH
from distillery.api.spec import DistillationSpec
from distillery.resources import jobs, pipeline_json, reporting, student, teacher, workspace
from distillery.resources.common import Owner
from tests.cluster.distillations import distillation
from tests.cluster.kube import Kube
from tests.validation_cases import CASES, Case, refusal_pattern

pytestmark = pytest.mark.cluster
CONFIG = OperatorConfig()


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return obj


_DELETE = object()

# (what is wrong, path in the manifest, value, text the error must contain)
INVALID = [
    ("unknown task", "spec.task", "translation", "spec.task"),
    ("missing region", "spec.region", _DELETE, "spec.region"),
    ("region with capitals", "spec.region", "WestUS3", "spec.region"),
    ("missing teacher", "spec.teacher", _DELETE, "spec.teacher"),
    ("teacher with neither model nor endpoint", "spec.teacher", {"gpus": 1}, "teacher.model and teacher.endpoint"),
    ("teacher with model and endpoint", "spec.teacher.endpoint", {"url": "https://x.example/v1", "model": "m"},
     "teacher.model and teacher.endpoint"),
    ("gpus not divisible by tensor parallel", "spec.teacher.tensorParallelSize", 3, "spec.teacher.gpus"),
    ("too many teacher gpus", "spec.teacher.gpus", 64, "spec.teacher.gpus"),
    ("temperature out of range", "spec.teacher.sampling", {"temperature": 3}, "spec.teacher.sampling.temperature"),
    ("top-p zero", "spec.teacher.sampling", {"topP": 0}, "spec.teacher.sampling.topP"),
    ("min success ratio above 1", "spec.teacher.minSuccessRatio", 1.5, "spec.teacher.minSuccessRatio"),
    ("endpoint without scheme", "spec.teacher", {"endpoint": {"url": "api.example.com", "model": "m"}},
     "spec.teacher.endpoint.url"),
    ("chain of density for nli", "spec.prompt", {"chainOfDensity": True}, "spec.prompt.chainOfDensity"),
    ("custom task without template", "spec.task", "custom", "spec.prompt.userTemplate"),
    ("dataset with uri and rows", "spec.dataset.train.uri", "hf://org/set", "exactly one of uri and rows"),
    ("dataset uri with unknown scheme", "spec.dataset.train", {"uri": "ftp://host/file"}, "spec.dataset.train.uri"),
    ("unknown training method", "spec.student.method", "qlora-ish", "spec.student.method"),
    ("zero stage 4", "spec.student.zeroStage", 4, "spec.student.zeroStage"),
    ("negative learning rate", "spec.student.learningRate", -0.1, "spec.student.learningRate"),
    ("zero epochs", "spec.student.epochs", 0, "spec.student.epochs"),
    ("lora rank zero", "spec.student.lora", {"rank": 0}, "spec.student.lora.rank"),
    ("student without model", "spec.student.model", _DELETE, "spec.student.model"),
    ("unknown evaluation baseline", "spec.evaluation", {"baselines": ["oracle"]}, "spec.evaluation.baselines"),
    ("bad storage size", "spec.storage", {"size": "lots"}, "spec.storage.size"),
    ("unknown field", "spec.teacher.temprature", 0.5, "temprature"),
    ("bad toleration effect", "spec.scheduling", {"tolerations": [{"key": "a", "effect": "Sometimes"}]},
     "spec.scheduling.tolerations[0].effect"),
    ("judge with neither teacher nor endpoint", "spec.evaluation", {"judge": {"maxAttempts": 2}},
     "exactly one of evaluation.judge.teacher and evaluation.judge.endpoint must be set"),
    ("judge for nli", "spec.evaluation", {"judge": {"teacher": True}},
     "spec.evaluation.judge: Invalid value: evaluation.judge is only valid for the open-ended tasks"),
    ("persona for nli", "spec.prompt", {"persona": {"name": "Ada"}},
     "spec.prompt.persona: Invalid value: prompt.persona is only valid for the open-ended tasks"),
    ("empty gate", "spec.evaluation", {"gate": {}}, "evaluation.gate needs minScore or minGapClosed"),
    ("gate without evaluation", "spec.evaluation", {"enabled": False, "gate": {"minScore": 50}},
     "spec.evaluation.gate: Invalid value: evaluation.gate needs evaluation.enabled"),
    ("gap gate without the teacher baseline", "spec.evaluation",
     {"baselines": ["base-student"], "gate": {"minGapClosed": 0.5}},
     "spec.evaluation.gate.minGapClosed: Invalid value: evaluation.gate.minGapClosed needs both"),
    ("gap share above 1", "spec.evaluation", {"gate": {"minGapClosed": 1.5}}, "spec.evaluation.gate.minGapClosed"),
    ("dataset without train or generate", "spec.dataset.train", _DELETE,
     "dataset.train is required unless dataset.generate is set"),
    ("generate without seed rows", "spec.dataset.generate", {"seeds": {"rows": []}, "count": 5},
     "spec.dataset.generate.seeds.rows"),
    ("generate count zero", "spec.dataset.generate", {"seeds": {"rows": [{"premise": "p", "hypothesis": "h"}]},
                                                      "count": 0}, "spec.dataset.generate.count"),
    ("generate maxRequests below count", "spec.dataset.generate",
     {"seeds": {"rows": [{"premise": "p", "hypothesis": "h"}]}, "count": 10, "maxRequests": 5},
     "spec.dataset.generate.maxRequests"),
    ("labelsFrom neither a name nor pvc", "spec.dataset.labelsFrom", "hf://org/labels", "spec.dataset.labelsFrom"),
]


@pytest.mark.parametrize(("what", "path", "value", "expected"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(kube: Kube, crd: None, namespace: str, what: str, path: str,
                                                       value: Any, expected: str) -> None:
    manifest = _set(distillation("bad"), path, value)
    result = kube.apply(manifest, namespace=namespace, server_side=False, check=False)
    assert result.returncode != 0, f"{what}: accepted"
    assert expected in result.stderr, f"{what}: {result.stderr}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_api_server_evaluates_the_rule_as_pydantic_does(kube: Kube, crd: None, namespace: str,
                                                            case: Case) -> None:
    """The table tests/unit/test_validation_rules.py runs through pydantic, sent to the API server (a server-side
    dry run validates fully and stores nothing)."""
    manifest = {"apiVersion": "distillery.dev/v1alpha1", "kind": "Distillation", "metadata": {"name": "case"},
                "spec": case.spec}
    result = kube.run("create", "--dry-run=server", "-f", "-", "-n", namespace, input=json.dumps(manifest),
                      check=False)
    if case.refused_at is None:
        assert result.returncode == 0, f"{case.id}: {result.stderr}"
    else:
        assert result.returncode != 0, f"{case.id}: accepted"
        assert refusal_pattern(case).search(result.stderr), f"{case.id}: {result.stderr}"


def test_kd_from_an_endpoint_without_logprobs_is_refused_naming_both_fields(kube: Kube, crd: None,
                                                                         namespace: str) -> None:
    endpoint = {"endpoint": {"url": "https://api.example.com/v1", "model": "m", "logprobs": False}}
    student = {"model": "Qwen/Qwen2.5-1.5B-Instruct", "loss": {"type": "kd", "temperature": 2}}
    refused = kube.apply(distillation("kd-no-logprobs", teacher=endpoint, student=student), namespace=namespace,
                         server_side=False, check=False)
    assert refused.returncode != 0
    assert "spec.student.loss.type" in refused.stderr and "teacher.endpoint.logprobs" in refused.stderr
    too_many = kube.apply(distillation("kd-k", student={**student, "loss": {"type": "kd", "topLogprobs": 21}}),
                          namespace=namespace, server_side=False, check=False)
    assert too_many.returncode != 0 and "spec.student.loss.topLogprobs" in too_many.stderr
    kube.apply(distillation("kd-ok", teacher={"endpoint": {**endpoint["endpoint"], "logprobs": True}},
                            student=student), namespace=namespace)
    loss = kube.get("distillation", "kd-ok", namespace)["spec"]["student"]["loss"]
    assert loss == {"type": "kd", "weight": 0.5, "temperature": 2, "topLogprobs": 5}


def test_a_valid_manifest_is_accepted_and_defaulted(kube: Kube, crd: None, namespace: str) -> None:
    kube.apply(distillation("good"), namespace=namespace)
    spec = kube.get("distillation", "good", namespace)["spec"]
    assert spec["student"]["method"] == "lora" and spec["student"]["lora"]["rank"] == 16
    assert spec["teacher"]["sampling"]["temperature"] == 0.2
    assert spec["evaluation"]["baselines"] == ["teacher", "base-student"]
    assert spec["student"]["loss"]["type"] == "sft"


def test_spec_is_immutable_except_suspend_and_serving(kube: Kube, crd: None, namespace: str) -> None:
    kube.apply(distillation("fixed"), namespace=namespace)
    changed = kube.run("patch", "distillation", "fixed", "-n", namespace, "--type=merge",
                       "-p", '{"spec":{"region":"eastus2"}}', check=False)
    assert changed.returncode != 0 and "spec.region is immutable" in changed.stderr
    assert kube.run("patch", "distillation", "fixed", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"suspend":true,"serving":{"replicas":3}}}', check=False).returncode == 0


@pytest.mark.parametrize(("name", "accepted", "expected"), [
    ("a" * MAX_NAME_LENGTH, True, ""),
    ("a" * (MAX_NAME_LENGTH + 1), False, f"metadata.name must be at most {MAX_NAME_LENGTH} characters"),
    ("x1-y2", True, ""),
    ("conj.nli", False, "no dots"),
    ("1st-run", False, "must start with a lowercase letter"),
    ("run-", False, "must start with a lowercase letter"),
], ids=["at-length-limit", "past-length-limit", "letters-digits-dashes", "dot", "leading-digit", "trailing-dash"])
def test_names_that_cannot_name_every_child_are_refused(kube: Kube, crd: None, namespace: str, name: str,
                                                        accepted: bool, expected: str) -> None:
    result = kube.apply(distillation(name), namespace=namespace, server_side=False, check=False)
    assert (result.returncode == 0) == accepted, result.stderr
    assert expected in result.stderr


def test_every_child_of_the_longest_name_is_valid(kube: Kube, crd: None, namespace: str) -> None:
    """The limit is right: with a name at the limit, every child the planner makes passes server-side
    validation (a dry run creates nothing), training pods' hostnames included."""
    name = "n" * MAX_NAME_LENGTH
    spec = DistillationSpec.model_validate(_set(distillation(name), "spec.student.nodes", 128)["spec"])
    owner = Owner(name, namespace, "00000000-0000-0000-0000-000000000000")
    children = [workspace.workspace_pvc(owner, spec, CONFIG), pipeline_json.pipeline_configmap(owner, spec),
                teacher.teacher_deployment(owner, spec, CONFIG), teacher.teacher_service(owner, spec),
                jobs.labeling_job(owner, spec, CONFIG), jobs.generation_job(owner, spec, CONFIG),
                jobs.training_service(owner),
                jobs.training_job(owner, spec, CONFIG),
                jobs.evaluation_job(owner, spec, CONFIG), student.student_deployment(owner, spec, CONFIG),
                student.student_service(owner), reporting.progress_configmap(owner),
                reporting.workload_service_account(owner), reporting.workload_role(owner),
                reporting.workload_role_binding(owner)]
    for child in children:
        child["metadata"].pop("ownerReferences")
        result = kube.run("create", "--dry-run=server", "-f", "-", "-n", namespace, input=json.dumps(child),
                          check=False)
        assert result.returncode == 0, f"{child['kind']} {child['metadata']['name']}: {result.stderr}"
    last_host = f"{name}-train-{spec.student.nodes - 1}"
    assert len(last_host) <= 63, last_host


def several_teachers(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A Distillation with two in-cluster teachers that vote."""
    manifest = distillation(name)
    spec = manifest["spec"]
    member = spec.pop("teacher")
    spec["teachers"] = [{**member, "name": "llama"}, {**member, "name": "qwen", "model": "Qwen/Qwen2.5-72B-Instruct"}]
    spec["teacherStrategy"] = {"mode": "vote"}
    for key, value in spec_overrides.items():
        if value is _DELETE:
            spec.pop(key, None)
        else:
            spec[key] = value
    return manifest


_MEMBER = {"name": "a", "model": "m"}
SEVERAL_INVALID = [
    ("teacher and teachers", {"teacher": {"model": "m"}}, "spec.teacher: Invalid value"),
    ("one teacher in teachers", {"teachers": [_MEMBER]}, "spec.teachers"),
    ("five teachers", {"teachers": [{**_MEMBER, "name": f"t{i}"} for i in range(5)]}, "spec.teachers"),
    ("duplicate names", {"teachers": [_MEMBER, _MEMBER]}, "spec.teachers: Invalid value"),
    ("teacher name with a dot", {"teachers": [_MEMBER, {**_MEMBER, "name": "b.c"}]}, "spec.teachers[1].name"),
    ("member with model and endpoint", {"teachers": [_MEMBER, {**_MEMBER, "name": "b", "endpoint": {
        "url": "https://x.example/v1", "model": "m"}}]}, "teacher.model and teacher.endpoint"),
    ("teachers without a strategy", {"teacherStrategy": _DELETE}, "spec.teacherStrategy: Invalid value"),
    ("vote on an open-ended task", {"task": "conversation"}, "spec.teacherStrategy.mode: Invalid value"),
    ("judge mode without a judge", {"teacherStrategy": {"mode": "judge"}}, "spec.teacherStrategy.judge"),
    ("judge naming no teacher", {"teacherStrategy": {"mode": "judge", "judge": {"teacher": "gpt"}}},
     "spec.teacherStrategy.judge.teacher: Invalid value"),
    ("unknown strategy", {"teacherStrategy": {"mode": "average"}}, "spec.teacherStrategy.mode"),
]


@pytest.mark.parametrize(("what", "overrides", "expected"), SEVERAL_INVALID, ids=[i[0] for i in SEVERAL_INVALID])
def test_several_teachers_bad_combinations_are_refused_naming_the_field(
        kube: Kube, crd: None, namespace: str, what: str, overrides: dict[str, Any], expected: str) -> None:
    result = kube.apply(several_teachers("bad", **overrides), namespace=namespace, server_side=False, check=False)
    assert result.returncode != 0, f"{what}: accepted"
    assert expected in result.stderr, f"{what}: {result.stderr}"


def test_several_teachers_are_accepted_and_every_child_of_the_longest_name_is_valid(
        kube: Kube, crd: None, namespace: str) -> None:
    kube.apply(several_teachers("judged", task="conversation",
                                teacherStrategy={"mode": "judge", "judge": {"teacher": "qwen"}}), namespace=namespace)
    assert kube.get("distillation", "judged", namespace)["spec"]["teachers"][1]["sampling"]["temperature"] == 0.2
    name = "n" * MAX_NAME_LENGTH
    spec = DistillationSpec.model_validate(several_teachers(name)["spec"])
    owner = Owner(name, namespace, "00000000-0000-0000-0000-000000000000")
    children = [pipeline_json.pipeline_configmap(owner, spec), jobs.labeling_job(owner, spec, CONFIG),
                *(build for i in teacher.served_teachers(spec)
                  for build in (teacher.teacher_deployment(owner, spec, CONFIG, i),
                                teacher.teacher_service(owner, spec, i)))]
    for child in children:
        child["metadata"].pop("ownerReferences")
        result = kube.run("create", "--dry-run=server", "-f", "-", "-n", namespace, input=json.dumps(child),
                          check=False)
        assert result.returncode == 0, f"{child['kind']} {child['metadata']['name']}: {result.stderr}"
