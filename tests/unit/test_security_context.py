"""Every pod Distillery creates carries a security context that works on fresh volumes; the workload pods
meet Pod Security "restricted", the vLLM pods as far as a root image allows, and both are overridable."""

from pathlib import Path
from typing import Any

import yaml

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.resources import jobs, student, teacher
from distillery.resources.common import Owner

OWNER = Owner("d", "ns", "uid")
CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "distillery" / "values.yaml"
RESTRICTED_POD_FIELDS = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                         "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def spec(**overrides: Any) -> DistillationSpec:
    data: dict[str, Any] = {
        "task": "nli", "region": "westus3",
        "teacher": {"model": "m", "gpus": 1},
        "dataset": {"train": {"rows": [{"premise": "p", "hypothesis": "h", "label": "entailment"}]}},
        "student": {"model": "s"},
    }
    data.update(overrides)
    return DistillationSpec.model_validate(data)


def pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def test_workload_pods_run_restricted_as_the_images_user_with_writable_fresh_volumes() -> None:
    s, config = spec(), OperatorConfig()
    for build in (jobs.labeling_job, jobs.training_job, jobs.evaluation_job, jobs.generation_job):
        p = pod(build(OWNER, s, config))
        assert p["securityContext"] == RESTRICTED_POD_FIELDS, build.__name__
        (container,) = p["containers"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_vllm_pods_default_to_everything_restricted_but_non_root() -> None:
    s, config = spec(), OperatorConfig()
    for p in (pod(teacher.teacher_deployment(OWNER, s, config)), pod(student.student_deployment(OWNER, s, config))):
        assert p["securityContext"] == {"fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch",
                                        "seccompProfile": {"type": "RuntimeDefault"}}
        assert "runAsNonRoot" not in p["securityContext"], "the upstream vLLM image runs as root"
        assert p["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_a_distillation_or_the_operator_config_makes_the_servers_non_root() -> None:
    nonroot = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}
    s = spec(teacher={"model": "m", "securityContext": nonroot}, serving={"securityContext": {"runAsUser": 7}})
    config = OperatorConfig()
    assert pod(teacher.teacher_deployment(OWNER, s, config))["securityContext"] == {
        "fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
        **nonroot}
    assert pod(student.student_deployment(OWNER, s, config))["securityContext"]["runAsUser"] == 7
    config = OperatorConfig(serving_pod_security_context={"runAsNonRoot": True, "runAsUser": 65532})
    assert pod(student.student_deployment(OWNER, spec(), config))["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532}


def test_the_charts_default_security_contexts_are_the_operators() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())["config"]
    config = OperatorConfig()
    assert values["workloadPodSecurityContext"] == config.workload_pod_security_context
    assert values["servingPodSecurityContext"] == config.serving_pod_security_context
