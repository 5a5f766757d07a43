"""What the rendered stage and server pods carry: the hub token, the model cache, probes that fit a saturated
vLLM, failure policies and grace periods (issue 9, items 3 and 4)."""

import ast
from pathlib import Path
from typing import Any

import pytest

from distillery.api.config import OperatorConfig
from distillery.api.reports import ExitCode
from distillery.api.spec import DistillationSpec
from distillery.resources.common import HUB_CACHE_DIR, Owner
from distillery.resources.jobs import evaluation_job, generation_job, labeling_job, training_job
from distillery.resources.student import student_deployment
from distillery.resources.teacher import teacher_deployment

OWNER = Owner("demo", "team-a", "uid-1")
CONFIG = OperatorConfig(vllm_image="registry.example/vllm:v0.33.0", trainer_image="registry.example/trainer:1")
WORKLOADS = Path(__file__).resolve().parents[2] / "operator" / "distillery" / "workloads"
TOKEN = {"name": "hf", "key": "token"}


def make_spec(**extra: Any) -> DistillationSpec:
    return DistillationSpec.model_validate({
        "task": "nli",
        "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpus": 8, "tensorParallelSize": 8},
        "dataset": {"train": {"uri": "hf://nyu-mll/glue"}},
        "student": {"model": "meta-llama/Llama-3.2-1B-Instruct", "nodes": 2, "gpusPerNode": 8},
        **extra,
    })


def pods(spec: DistillationSpec) -> dict[str, dict[str, Any]]:
    """Pod specs by stage, each as the API server would create it."""
    return {
        "teacher": teacher_deployment(OWNER, spec, CONFIG)["spec"]["template"]["spec"],
        "labeling": labeling_job(OWNER, spec, CONFIG)["spec"]["template"]["spec"],
        "training": training_job(OWNER, spec, CONFIG)["spec"]["template"]["spec"],
        "evaluation": evaluation_job(OWNER, spec, CONFIG)["spec"]["template"]["spec"],
        "serving": student_deployment(OWNER, spec, CONFIG)["spec"]["template"]["spec"],
    }


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


def test_the_hub_token_reaches_every_pod_that_reads_the_hub() -> None:
    for stage, pod in pods(make_spec(hubTokenSecretRef=TOKEN)).items():
        assert env(pod)["HF_TOKEN"] == {"secretKeyRef": TOKEN}, stage


def test_the_teachers_own_token_wins_and_still_works_alone() -> None:
    own = {"name": "teacher-hf", "key": "t"}
    spec = make_spec(hubTokenSecretRef=TOKEN,
                     teacher={"model": "meta-llama/Llama-3.3-70B-Instruct", "hubTokenSecretRef": own})
    rendered = pods(spec)
    assert env(rendered["teacher"])["HF_TOKEN"] == {"secretKeyRef": own}
    assert env(rendered["training"])["HF_TOKEN"] == {"secretKeyRef": TOKEN}
    alone = pods(make_spec(teacher={"model": "meta-llama/Llama-3.3-70B-Instruct", "hubTokenSecretRef": own}))
    assert env(alone["teacher"])["HF_TOKEN"] == {"secretKeyRef": own}
    assert all("HF_TOKEN" not in env(pod) for stage, pod in alone.items() if stage != "teacher")


@pytest.mark.parametrize("cache, volume", [
    ({"claimName": "hub-cache"}, {"persistentVolumeClaim": {"claimName": "hub-cache"}}),
    ({"ephemeral": {"storageClassName": "local-nvme", "size": "500Gi"}},
     {"ephemeral": {"volumeClaimTemplate": {"spec": {
         "accessModes": ["ReadWriteOnce"], "storageClassName": "local-nvme",
         "resources": {"requests": {"storage": "500Gi"}}}}}}),
])
def test_the_model_cache_is_mounted_at_hf_home_where_models_load(cache: dict[str, Any],
                                                                 volume: dict[str, Any]) -> None:
    for stage, pod in pods(make_spec(modelCache=cache)).items():
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if stage == "labeling":  # CPU pods read datasets only; a GPU-zone RWO claim would not attach there
            assert HUB_CACHE_DIR not in mounts and "HF_HOME" not in env(pod)
            continue
        assert env(pod)["HF_HOME"] == HUB_CACHE_DIR, stage
        assert volumes[mounts[HUB_CACHE_DIR]] == {"name": mounts[HUB_CACHE_DIR], **volume}, stage


def test_without_a_cache_or_token_pods_carry_neither() -> None:
    for stage, pod in pods(make_spec()).items():
        assert not {"HF_TOKEN", "HF_HOME"} & set(env(pod)), stage
        assert HUB_CACHE_DIR not in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}


def test_images_default_to_the_operator_config_and_a_spec_image_wins() -> None:
    rendered = pods(make_spec())
    assert {stage: pod["containers"][0]["image"] for stage, pod in rendered.items() if stage != "labeling"} == {
        "teacher": CONFIG.vllm_image, "serving": CONFIG.vllm_image,
        "training": CONFIG.trainer_image, "evaluation": CONFIG.trainer_image}
    own = pods(make_spec(serving={"image": "mine/vllm:1"}, student={
        "model": "m", "image": "mine/trainer:1"}))
    assert own["serving"]["containers"][0]["image"] == "mine/vllm:1"
    assert own["training"]["containers"][0]["image"] == "mine/trainer:1"


@pytest.mark.parametrize("stage, budget", [("teacher", 1800), ("serving", 900)])
def test_server_probes_tolerate_a_saturated_server_and_the_deadline_covers_startup(stage: str,
                                                                                  budget: int) -> None:
    spec = make_spec()
    deployment = (teacher_deployment if stage == "teacher" else student_deployment)(OWNER, spec, CONFIG)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        # The kubelet's default timeout is 1 s, which a vLLM busy with the labeler's batch misses.
        assert container[kind]["timeoutSeconds"] >= 10, kind
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 300, "liveness restarts a model after < 5 min"
    assert deployment["spec"]["progressDeadlineSeconds"] >= budget + 600


def test_the_startup_budget_is_configurable() -> None:
    spec = make_spec(teacher={"model": "meta-llama/Llama-3.3-70B-Instruct", "startupSeconds": 5400})
    deployment = teacher_deployment(OWNER, spec, CONFIG)
    startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 5400
    assert deployment["spec"]["progressDeadlineSeconds"] > 5400


@pytest.mark.parametrize("build, container", [(labeling_job, "labeler"), (training_job, "trainer"),
                                              (evaluation_job, "evaluator"), (generation_job, "labeler")])
def test_jobs_ignore_disruptions_and_fail_at_once_on_configuration_errors(build: Any, container: str) -> None:
    job = build(OWNER, make_spec(), CONFIG)["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": "In",
                                                 "values": [2, 3, 5, 6]}} in rules


def test_each_exit_code_means_one_thing_and_the_deterministic_ones_are_final() -> None:
    assert len(ExitCode.__members__) == len(ExitCode)  # no two meanings share a value (IntEnum would alias them)
    assert {code for code in ExitCode if code.final} == {ExitCode.CONFIG, ExitCode.TOO_FEW_LABELS,
                                                         ExitCode.NO_DATA, ExitCode.TOO_FEW_INPUTS}
    # What a rerun can fix (an unreachable teacher, SIGTERM) must stay retryable.
    assert not ExitCode.TEACHER_UNREACHABLE.final and not ExitCode.TERMINATED.final
    assert ExitCode.TERMINATED == 143  # what the kubelet and torchrun report for a SIGTERM


def _exit_constants(module: Path) -> dict[str, int]:
    """EXIT_* constants of a workload module, read from its source (the trainer needs torch to import)."""
    found: dict[str, int] = {}
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(targets, values, strict=False):
                if isinstance(target, ast.Name) and target.id.startswith("EXIT_") and isinstance(value, ast.Constant):
                    found[target.id] = value.value
    return found


@pytest.mark.parametrize("module", sorted(WORKLOADS.rglob("*.py")), ids=lambda p: p.stem)
def test_programs_exit_with_the_shared_codes(module: Path) -> None:
    assert not _exit_constants(module), f"{module.name} defines its own exit codes; use api.reports.ExitCode"


def test_training_pods_get_time_to_checkpoint_and_torchrun_waits_for_it() -> None:
    spec = make_spec(student={"model": "m", "nodes": 2, "gpusPerNode": 8, "terminationGraceSeconds": 1200})
    pod = training_job(OWNER, spec, CONFIG)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 1200
    shutdown = int(env(pod)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
    assert 600 <= shutdown < 1200
    assert pod["containers"][0]["command"] == ["distillery", "launch"]
    assert make_spec().student.termination_grace_seconds >= 300


def test_a_kd_teacher_serves_as_many_logprobs_as_the_labeler_asks_for() -> None:
    kd = make_spec(student={"model": "meta-llama/Llama-3.2-1B-Instruct", "loss": {"type": "kd", "topLogprobs": 12}})
    args = pods(kd)["teacher"]["containers"][0]["args"]
    assert args[args.index("--max-logprobs") + 1] == "12"
    assert "--max-logprobs" not in pods(make_spec())["teacher"]["containers"][0]["args"]
