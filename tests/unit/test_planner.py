"""Every transition of the pure planner, driven through a tiny in-memory stand-in for the cluster."""

import json
from datetime import timedelta
from typing import Any

import pytest

from distillery.api.spec import DistillationSpec, GateSpec
from distillery.api.status import DistillationStatus, ModelScore, Phase, StageState, format_time
from distillery.controller.observe import MOUNT_GRACE_SECONDS, NodeView, creating_too_long, mount_failure, observe
from distillery.controller.planner import (
    MAX_TRAINING_ATTEMPTS,
    Apply,
    Create,
    Delete,
    Patch,
    Plan,
    gap_closed,
    gate_verdict,
    gpu_pool_fits,
    plan,
)
from distillery.resources.common import STAGE_LABEL
from tests.unit.planner_world import CONFIG, H100, OWNER, World, make_spec

IDENTITY = ["ConfigMap/demo-progress", "ServiceAccount/demo-workload", "Role/demo-workload"]


def labeling_world() -> World:
    """A Distillation whose teacher serves and whose labeling Job has just been created."""
    w = World(make_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    return w


def run_to_success(w: World) -> None:
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label", json.dumps({"rows_ok": 90, "rows_rejected": 10, "rows_total": 100,
                                             "tokens_in": 5000, "tokens_out": 7000}), "labeling")
    w.step(30)
    w.complete_job("demo-train", json.dumps({"steps": 40, "total_steps": 40, "final_loss": 0.41}), "training")
    w.step(60)
    w.complete_job("demo-eval", json.dumps({"metric": "accuracy", "results": [
        {"model": "teacher", "prompt": "cot", "score": 69.98, "rows": 100},
        {"model": "base-student", "prompt": "cot", "score": 52.81, "rows": 100},
        {"model": "distilled-student", "prompt": "short", "score": 63.88, "rows": 100}]}), "evaluation")
    w.step(10)
    w.make_available("demo-student")
    w.step()


def test_first_visit_sets_every_condition_and_creates_workspace_and_teacher() -> None:
    w = World(make_spec())
    w.step()
    assert w.created() == ["PersistentVolumeClaim/demo-workspace", "ConfigMap/demo-pipeline", *IDENTITY,
                           "Deployment/demo-teacher", "Service/demo-teacher"]
    # The Role's binding follows once the Role exists, so a restricted operator can bind it.
    w.step()
    assert w.created()[-1] == "RoleBinding/demo-workload"
    types = {c.type for c in w.status.conditions}
    assert {"Ready", "Succeeded", "Failed", "Reconciling", "Stalled", "TeacherReady", "Labeled", "Trained",
            "Evaluated", "StudentReady"} <= types
    assert w.cond("Labeled") == "Unknown"
    assert w.status.phase == Phase.TEACHER
    assert w.status.observed_generation == 1


def test_happy_path_runs_stages_in_order_and_reports_results() -> None:
    w = World(make_spec())
    run_to_success(w)
    assert w.created() == [
        "PersistentVolumeClaim/demo-workspace", "ConfigMap/demo-pipeline", *IDENTITY, "Deployment/demo-teacher",
        "Service/demo-teacher", "RoleBinding/demo-workload", "Job/demo-label", "Service/demo-train",
        "Job/demo-train", "Job/demo-eval",
        "Deployment/demo-student", "Service/demo-student",
    ]
    assert w.status.phase == Phase.SUCCEEDED
    assert w.cond("Succeeded") == "True" and w.cond("Ready") == "True" and w.cond("Reconciling") == "False"
    assert [(r.model, r.score) for r in w.status.results] == [
        ("teacher", 69.98), ("base-student", 52.81), ("distilled-student", 63.88)]
    assert w.status.progress.rows_labeled == 90 and w.status.progress.train_loss == 0.41
    assert w.status.student_endpoint == "http://demo-student.team-a.svc:8000/v1"
    # Training ran 60 minutes on 1 node x 2 GPUs.
    assert w.status.stages["training"].gpu_hours == pytest.approx(2.0)
    assert w.status.gpu_hours >= 2.0


def test_teacher_is_removed_as_soon_as_labeling_is_done() -> None:
    w = labeling_world()
    w.complete_job("demo-label")
    result = w.step()
    assert Delete("Deployment", "demo-teacher") in result.actions
    assert not w.has("Deployment", "demo-teacher")
    assert w.status.stages["teacher"].state == StageState.REMOVED
    assert w.reason("TeacherReady") == "RemovedAfterLabeling"


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_a_pipeline_whose_status_is_never_written_still_succeeds(keep: bool) -> None:
    """The operator killed before each of its status writes: every pass plans from an empty status, so only the
    children carry the pipeline. The teacher, removed (or kept) by a pass whose status was lost, must not hold
    the Distillation in StartingTeacher for ever once a write lands."""
    w = World(make_spec(**{"teacher.keepAfterLabeling": keep}))

    def step_and_lose_status() -> None:
        w.step()
        w.status = DistillationStatus()

    step_and_lose_status()
    w.make_available("demo-teacher")
    step_and_lose_status()
    w.complete_job("demo-label")
    step_and_lose_status()
    assert w.has("Deployment", "demo-teacher") == keep
    w.complete_job("demo-train")
    step_and_lose_status()
    w.complete_job("demo-eval")
    step_and_lose_status()
    w.make_available("demo-student")
    w.step()
    assert w.status.phase == Phase.SUCCEEDED and w.cond("Succeeded") == "True"
    assert w.status.stages["teacher"].state == (StageState.SUCCEEDED if keep else StageState.REMOVED)
    assert w.reason("TeacherReady") == ("Serving" if keep else "RemovedAfterLabeling")
    assert w.created().count("Deployment/demo-teacher") == 1


def test_teacher_is_kept_when_asked() -> None:
    w = World(make_spec(**{"teacher.keepAfterLabeling": True}))
    run_to_success(w)
    assert w.has("Deployment", "demo-teacher")
    assert w.status.phase == Phase.SUCCEEDED


def test_external_endpoint_skips_the_teacher_stage() -> None:
    w = World(make_spec(**{"teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt"}}}))
    w.step()
    assert "Deployment/demo-teacher" not in w.created()
    assert w.has("Job", "demo-label")
    assert w.status.stages["teacher"].state == StageState.SKIPPED
    assert w.cond("TeacherReady") == "True"


def test_waits_without_creating_pods_when_no_pool_in_the_region_fits() -> None:
    w = World(make_spec(region="eastus2"))  # eastus2 has only A100s; the teacher asks for H100s
    w.step()
    assert not w.has("Deployment", "demo-teacher")
    assert w.reason("TeacherReady") == "NoMatchingGPUNodePool"
    assert w.reason("Reconciling") == "NoMatchingGPUNodePool"
    assert w.cond("Stalled") == "False" and w.cond("Failed") == "False"
    assert w.status.stages["teacher"].state == StageState.WAITING
    w.nodes = (*w.nodes, NodeView(labels={"topology.kubernetes.io/region": "eastus2",
                                          "nvidia.com/gpu.product": "NVIDIA-H100-NVL"},
                                  allocatable_gpus=8))
    w.step()
    assert w.has("Deployment", "demo-teacher")


def test_pool_fit_counts_nodes_for_multi_node_training() -> None:
    assert gpu_pool_fits((H100,), CONFIG, "westus3", "H100", 8, pods=1)
    assert not gpu_pool_fits((H100,), CONFIG, "westus3", "H100", 8, pods=2)
    assert not gpu_pool_fits((H100,), CONFIG, "westus3", "H100", 16)
    assert not gpu_pool_fits((H100,), CONFIG, "westus3", "A100", 1)
    assert gpu_pool_fits((H100,), CONFIG, "westus3", None, 0)


def test_failed_training_ends_failed_and_stalled_and_creates_nothing_more() -> None:
    w = World(make_spec(**{"teacher.keepAfterLabeling": True}))
    w.config = CONFIG.model_copy(update={"job_backoff_limit": 0})
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    w.fail_job("demo-train")
    w.step()
    assert w.status.phase == Phase.FAILED
    assert w.cond("Failed") == "True" and w.cond("Stalled") == "True" and w.cond("Ready") == "False"
    assert w.reason("Stalled") == "TrainingFailed"
    assert "BackoffLimitExceeded" in w.status.stages["training"].message
    before = len(w.created())
    w.step()
    assert len(w.created()) == before
    assert not w.has("Job", "demo-eval")


def test_failed_labeling_releases_the_teacher() -> None:
    w = labeling_world()
    w.fail_job("demo-label")
    w.step()
    assert w.reason("Failed") == "LabelingFailed"
    assert not w.has("Deployment", "demo-teacher")
    assert w.reason("TeacherReady") == "RemovedAfterFailure"
    assert w.status.stages["teacher"].message == "teacher removed after the labeling stage failed, to free its GPUs"


def test_suspend_pauses_jobs_frees_the_teacher_and_resume_continues() -> None:
    w = labeling_world()
    assert w.has("Job", "demo-label")
    w.spec = w.spec.model_copy(update={"suspend": True})
    result = w.step()
    assert Patch("Job", "demo-label", {"spec": {"suspend": True}}) in result.actions
    assert not w.has("Deployment", "demo-teacher")
    assert w.status.phase == Phase.SUSPENDED and w.cond("Suspended") == "True"
    assert w.step().actions == []  # stays paused, nothing more to do

    w.spec = w.spec.model_copy(update={"suspend": False})
    result = w.step()
    assert w.has("Deployment", "demo-teacher")
    # Labeling must not resume against a teacher that is not serving yet.
    assert not any(isinstance(a, Patch) and a.kind == "Job" for a in result.actions)
    w.make_available("demo-teacher")
    result = w.step()
    assert Patch("Job", "demo-label", {"spec": {"suspend": False}}) in result.actions
    assert w.status.phase == Phase.LABELING


QUOTA_MESSAGE = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
                 "flavor h100-westus3, 16 more needed")


def job_patches(w: World) -> list[Patch]:
    return [a for p in w.history for a in p.actions if isinstance(a, Patch) and a.kind == "Job"]


def admit(w: World, name: str) -> None:
    """What Kueue does on admission: un-suspend the Job (its Workload then reports nothing pending)."""
    w.children[("Job", name)]["spec"]["suspend"] = False
    w.queue_messages.pop(w.children[("Job", name)]["metadata"]["uid"], None)


def test_kueue_managed_jobs_wait_suspended_for_admission_and_the_operator_never_resumes_them() -> None:
    w = World(make_spec(**{"scheduling.queueName": "gpus"}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    label = w.children[("Job", "demo-label")]
    assert label["spec"]["suspend"] is True, "Kueue admits only Jobs created suspended"
    assert label["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert w.reason("Labeled") == "QueuedByKueue" and w.status.stages["labeling"].state == StageState.WAITING
    assert w.status.stages["labeling"].start_time is None, "queued time is not run time"

    w.queue_messages[label["metadata"]["uid"]] = QUOTA_MESSAGE
    w.step()
    assert w.reason("Labeled") == "QueuedByKueue" and w.reason("Reconciling") == "QueuedByKueue"
    message = next(c.message for c in w.status.conditions if c.type == "Labeled")
    assert message == f"queued in Kueue LocalQueue gpus: {QUOTA_MESSAGE}"
    assert [e.reason for p in w.history for e in p.events].count("QueuedByKueue") == 1

    admit(w, "demo-label")
    w.step()
    assert w.reason("Labeled") == "Running" and w.status.stages["labeling"].start_time is not None
    w.complete_job("demo-label")
    w.step()
    assert w.children[("Job", "demo-train")]["spec"]["suspend"] is True
    assert w.reason("Trained") == "QueuedByKueue"
    for _ in range(3):
        w.step()
    admit(w, "demo-train")
    w.step()
    assert w.reason("Trained") == "Running"
    assert job_patches(w) == [], "suspend belongs to Kueue"


def test_kueue_evicting_an_admitted_job_shows_as_queued_again() -> None:
    w = World(make_spec(**{"scheduling.queueName": "gpus"}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    admit(w, "demo-label")
    w.step()
    job = w.children[("Job", "demo-label")]
    job["spec"]["suspend"] = True
    w.queue_messages[job["metadata"]["uid"]] = "Preempted to accommodate a workload (UID: x) due to prioritization"
    w.step()
    assert w.reason("Labeled") == "QueuedByKueue"
    assert "Preempted" in next(c.message for c in w.status.conditions if c.type == "Labeled")
    assert job_patches(w) == []


def test_suspending_a_kueue_managed_distillation_deletes_its_running_job_and_resume_queues_a_new_one() -> None:
    w = World(make_spec(**{"scheduling.queueName": "gpus"}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    admit(w, "demo-label")
    w.step()
    w.spec = w.spec.model_copy(update={"suspend": True})
    result = w.step()
    # Kueue un-suspends an admitted Job that is suspended: only deleting it holds, and frees the quota.
    assert Delete("Job", "demo-label") in result.actions and not w.has("Job", "demo-label")
    assert w.status.phase == Phase.SUSPENDED
    assert w.step().actions == []

    w.spec = w.spec.model_copy(update={"suspend": False})
    w.step()
    w.make_available("demo-teacher")
    w.step()
    assert w.children[("Job", "demo-label")]["spec"]["suspend"] is True
    assert w.reason("Labeled") == "QueuedByKueue"
    assert job_patches(w) == []


def applied_replicas(result: Plan, name: str) -> list[int]:
    return [a.manifest["spec"]["replicas"] for a in result.actions
            if isinstance(a, Apply) and a.manifest["metadata"]["name"] == name]


def test_suspend_scales_the_student_to_zero_and_back() -> None:
    w = World(make_spec())
    run_to_success(w)
    assert not [a for a in w.step().actions if isinstance(a, Apply)], "nothing to apply when nothing changed"
    w.spec = w.spec.model_copy(update={"suspend": True})
    assert applied_replicas(w.step(), "demo-student") == [0]
    w.spec = w.spec.model_copy(update={"suspend": False})
    assert applied_replicas(w.step(), "demo-student") == [1]
    w.spec = w.spec.model_copy(update={"serving": w.spec.serving.model_copy(update={"replicas": 3})})
    assert applied_replicas(w.step(), "demo-student") == [3]
    assert applied_replicas(w.step(), "demo-student") == [], "applied once, then in sync"


def test_an_operator_setting_reaches_the_servers_that_already_run() -> None:
    w = World(make_spec(teacher={"model": "m", "gpuType": "H100", "gpus": 8, "keepAfterLabeling": True}))
    run_to_success(w)
    w.config = CONFIG.model_copy(update={"pod_annotations": {"example.com/team": "ml"}})
    updated = {a.manifest["metadata"]["name"]: a.manifest for a in w.step().actions if isinstance(a, Apply)}
    assert set(updated) == {"demo-teacher", "demo-student"}
    for manifest in updated.values():
        assert manifest["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "ml"
        assert manifest["metadata"]["annotations"]["distillery.dev/applied-hash"]


def test_restart_with_finished_stage_and_vanished_job_does_not_redo_it() -> None:
    w = labeling_world()
    w.complete_job("demo-label")
    w.step()
    # A new operator process: same status, the finished Job was garbage-collected (TTL).
    del w.children[("Job", "demo-label")]
    w.history.clear()
    w.step()
    assert "Job/demo-label" not in w.created()
    assert w.has("Job", "demo-train")


def test_restart_mid_stage_recreates_nothing_that_exists() -> None:
    w = labeling_world()
    restarted = World(make_spec())
    restarted.children, restarted.status, restarted.now = w.children, w.status, w.now
    result = restarted.step()
    assert not [a for a in result.actions if isinstance(a, Create)]


def test_same_inputs_twice_give_the_same_status() -> None:
    w = World(make_spec())
    w.step()
    w.step(0)
    first = w.status.to_wire()
    w.step(0)
    assert w.status.to_wire() == first
    assert w.history[-1].actions == []


def test_last_transition_time_moves_only_when_status_flips() -> None:
    w = World(make_spec())
    w.step()
    t0 = next(c.last_transition_time for c in w.status.conditions if c.type == "Ready")
    w.step(5)
    assert next(c.last_transition_time for c in w.status.conditions if c.type == "Ready") == t0
    w.make_available("demo-teacher")
    w.step()
    teacher = next(c for c in w.status.conditions if c.type == "TeacherReady")
    assert teacher.status == "True" and teacher.last_transition_time != t0


def test_evaluation_and_serving_can_be_disabled() -> None:
    w = World(make_spec(**{"evaluation.enabled": False, "serving.enabled": False}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    w.complete_job("demo-train")
    w.step()
    assert w.status.phase == Phase.SUCCEEDED
    assert w.status.stages["evaluation"].state == StageState.SKIPPED
    assert w.cond("Ready") == "True"
    assert "Job/demo-eval" not in w.created()


def test_live_progress_from_the_progress_configmap_reaches_status() -> None:
    w = World(make_spec())
    w.step()
    assert w.has("ConfigMap", "demo-progress") and w.has("Role", "demo-workload")
    w.make_available("demo-teacher")
    w.step()
    w.children[("ConfigMap", "demo-progress")]["data"] = {
        "labeling-00000": json.dumps({"rows_ok": 30, "rows_rejected": 2, "rows_total": 50, "tokens_in": 100}),
        "labeling-00001": json.dumps({"rows_ok": 40, "rows_rejected": 0, "rows_total": 50, "tokens_in": 120}),
    }
    w.step()
    assert w.status.progress.rows_labeled == 70 and w.status.progress.rows_total == 100
    assert w.status.progress_summary == "labeling 72/100"
    w.complete_job("demo-label")
    w.step()
    w.children[("ConfigMap", "demo-progress")]["data"]["training-00000"] = json.dumps(
        {"step": 12, "total_steps": 40, "loss": 1.2345})
    w.step()
    assert w.status.progress_summary == "training 12/40 loss 1.234"


def test_stage_pods_get_the_narrow_workload_identity() -> None:
    w = World(make_spec())
    w.step()
    role = w.children[("Role", "demo-workload")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["demo-progress"],
                              "verbs": ["get", "patch"]}]
    w.make_available("demo-teacher")
    w.step()
    pod = w.children[("Job", "demo-label")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-workload"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["DISTILLERY_PROGRESS_CONFIGMAP"]["value"] == "demo-progress"


def test_a_stage_pod_the_scheduler_cannot_place_is_reported_not_failed() -> None:
    w = World(make_spec())
    w.step()
    since = (w.now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    w.pods.append({"metadata": {"name": "demo-teacher-abc", "labels": {STAGE_LABEL: "teacher"}},
                   "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": 'persistentvolumeclaim "models" not found',
                                              "lastTransitionTime": since}]}})
    w.step()
    assert w.reason("TeacherReady") == "Starting", "a brief wait (a claim still binding) is not reported"
    w.step(0.5)
    assert w.reason("TeacherReady") == "Unschedulable"
    assert 'persistentvolumeclaim "models" not found' in next(
        c.message for c in w.status.conditions if c.type == "Reconciling")
    assert w.cond("Failed") == "False"
    w.pods.clear()
    w.make_available("demo-teacher")
    w.step()
    unplaced = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                "message": "0/20 nodes are available", "lastTransitionTime": since}]}
    # A pod of a predecessor's Job with the same name (another owner) says nothing about this one.
    w.pods.append({"metadata": {"name": "demo-label-0", "labels": {STAGE_LABEL: "labeling"},
                                "owners": ["uid-of-an-old-job"]}, "status": unplaced})
    w.step()
    assert w.reason("Labeled") == "Running"
    w.pods.append(w.job_pod("demo-label", "labeling", unplaced))
    w.step()
    assert w.reason("Labeled") == "Unschedulable"
    assert w.status.stages["labeling"].state == StageState.RUNNING


def test_a_restart_after_the_teacher_was_released_does_not_start_it_again() -> None:
    w = labeling_world()
    w.complete_job("demo-label")
    status_before = w.status.model_copy(deep=True)
    w.step()
    assert not w.has("Deployment", "demo-teacher") and not w.has("Service", "demo-teacher")
    # Killed before that status reached the API server: the next operator plans from the older status.
    w.status = status_before
    w.history.clear()
    w.step()
    assert not [c for c in w.created() if "teacher" in c], w.created()
    assert w.status.stages["labeling"].state == StageState.SUCCEEDED


def test_a_stage_pod_that_cannot_start_gives_the_kubelets_reason() -> None:
    w = labeling_world()
    w.step()
    w.pods.append(w.job_pod("demo-label", "labeling", {"containerStatuses": [{"restartCount": 0, "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}}}]}))
    w.step()
    assert w.reason("Labeled") == "ImagePullBackOff"
    assert 'Back-off pulling image "x"' in w.status.stages["labeling"].message
    assert w.status.stages["labeling"].state == StageState.RUNNING
    w.pods.clear()
    w.step()
    assert w.reason("Labeled") == "Running"


def test_capacity_check_none_creates_gpu_pods_on_a_pool_that_has_no_nodes_yet() -> None:
    """An autoscaled pool at zero nodes: only a pending pod makes the autoscaler add one."""
    waiting = World(make_spec(), nodes=())
    waiting.step()
    assert waiting.reason("TeacherReady") == "NoMatchingGPUNodePool" and not waiting.has("Deployment", "demo-teacher")

    w = World(make_spec(), nodes=())
    w.config = CONFIG.model_copy(update={"capacity_check": "none"})
    w.step()
    assert w.has("Deployment", "demo-teacher")
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    assert w.has("Job", "demo-train") and w.reason("Reconciling") == "Progressing"


def test_a_kd_training_stage_says_how_many_examples_the_teachers_distribution_reached() -> None:
    w = labeling_world()
    w.complete_job("demo-label")
    w.step()
    w.complete_job("demo-train", json.dumps({"steps": 12, "final_loss": 0.9, "examples": 24, "kd_examples": 23,
                                             "kd_unaligned": 1, "kd_missing": 0}), "training")
    w.step()
    assert w.status.stages["training"].message == (
        "12 optimizer steps, final loss 0.9, logit distillation on 23 of 24 examples")


def test_a_student_without_the_teachers_vocabulary_fails_training_with_the_reason() -> None:
    w = labeling_world()
    w.complete_job("demo-label")
    w.step()
    reason = "student.loss kd: the student's tokenizer lacks 46 of the 173 distinct tokens the teacher returned"
    # Exit 2 is a configuration error: the podFailurePolicy fails the Job at once, with no group restart.
    w.fail_job("demo-train", "PodFailurePolicy", "Container trainer for pod demo-train-0 failed with exit code 2")
    w.pods.append(w.job_pod("demo-train", "training", {
        "containerStatuses": [{"state": {"terminated": {"exitCode": 2, "message": json.dumps({"error": reason})}}}]}))
    w.step()
    assert w.reason("Stalled") == "TrainingFailed" and reason in w.status.stages["training"].message


# Evaluation judge and quality gate ---------------------------------------------------------------

def test_gap_closed_of_the_seeds_conjnli_table_is_64_5_percent() -> None:
    # The seed's ConjNLI table: base student 52.81, distilled 63.88, teacher 69.98.
    assert gap_closed(52.81, 69.98, 63.88) == pytest.approx(0.6447, abs=1e-4)
    assert f"{gap_closed(52.81, 69.98, 63.88):.1%}" == "64.5%"
    assert gap_closed(70.0, 69.98, 71.0) is None  # a teacher that does not beat the base leaves no gap


def conjnli_scores() -> list[ModelScore]:
    return [ModelScore(model="teacher", prompt="cot", metric="accuracy", score=69.98, rows=256),
            ModelScore(model="base-student", prompt="cot", metric="accuracy", score=52.81, rows=256),
            ModelScore(model="distilled-student", prompt="short", metric="accuracy", score=63.88, rows=256)]


@pytest.mark.parametrize(("gate", "passed", "words"), [
    ({"minGapClosed": 0.6}, True, "closes 64.5% of the gap from base-student 52.81 to teacher 69.98, at least "
                                  "minGapClosed 60.0%"),
    ({"minGapClosed": 0.7}, False, "closes 64.5% of the gap from base-student 52.81 to teacher 69.98, below "
                                   "minGapClosed 70.0%"),
    ({"minScore": 60}, True, "distilled-student accuracy 63.88 is at least minScore 60"),
    ({"minScore": 65}, False, "distilled-student accuracy 63.88 is below minScore 65"),
    ({"minScore": 60, "minGapClosed": 0.7}, False, "below minGapClosed 70.0%"),
])
def test_gate_verdict_gives_the_numbers(gate: dict[str, Any], passed: bool, words: str) -> None:
    ok, message = gate_verdict(GateSpec.model_validate(gate), conjnli_scores())
    assert ok is passed
    assert words in message


def test_a_gap_gate_without_the_teachers_score_fails_and_says_why() -> None:
    scores = [s for s in conjnli_scores() if s.model != "teacher"]
    ok, message = gate_verdict(GateSpec(min_gap_closed=0.5), scores)
    assert not ok and "needs the teacher score" in message
    ok, message = gate_verdict(GateSpec(min_score=1), [])
    assert not ok and "no score for the distilled student" in message


def run_to_evaluated(w: World) -> None:
    """Every stage up to a finished evaluation with the seed's ConjNLI numbers."""
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    w.complete_job("demo-train")
    w.step()
    w.complete_job("demo-eval", json.dumps({"metric": "accuracy", "results": [
        {"model": s.model, "prompt": s.prompt, "score": s.score, "rows": s.rows} for s in conjnli_scores()]}),
        "evaluation")
    w.step()


def test_a_student_that_misses_the_gate_is_not_served_and_the_distillation_fails() -> None:
    w = World(make_spec(**{"evaluation.gate": {"minGapClosed": 0.7}}))
    run_to_evaluated(w)
    assert not w.has("Deployment", "demo-student") and "Deployment/demo-student" not in w.created()
    assert w.status.phase == Phase.FAILED
    for type_ in ("Failed", "Stalled"):
        assert (w.cond(type_), w.reason(type_)) == ("True", "QualityGateFailed")
    assert (w.cond("StudentReady"), w.reason("StudentReady")) == ("False", "QualityGateFailed")
    assert w.cond("Evaluated") == "True" and w.cond("Succeeded") == "False"
    message = next(c.message for c in w.status.conditions if c.type == "Failed")
    assert "closes 64.5% of the gap" in message and "below minGapClosed 70.0%" in message
    assert w.status.stages["serving"].state == StageState.FAILED
    assert any(e.reason == "QualityGateFailed" for p in w.history for e in p.events)
    # Nothing is deleted from the workspace: the claim that holds the adapter is never touched.
    assert not any(isinstance(a, Delete) and a.kind == "PersistentVolumeClaim" for p in w.history for a in p.actions)
    # Later passes keep the verdict and create nothing.
    result = w.step()
    assert not [a for a in result.actions if isinstance(a, Create)]
    assert w.reason("Failed") == "QualityGateFailed"


def test_a_student_that_meets_the_gate_is_served() -> None:
    w = World(make_spec(**{"evaluation.gate": {"minScore": 60, "minGapClosed": 0.6}}))
    run_to_success(w)
    assert w.has("Deployment", "demo-student") and w.status.phase == Phase.SUCCEEDED
    assert any(e.reason == "QualityGatePassed" for p in w.history for e in p.events)


def judge_spec(**overrides: Any) -> DistillationSpec:
    return make_spec(**{"task": "conversation", "evaluation.judge": {"teacher": True}, **overrides})


def test_a_teacher_that_judges_serves_until_evaluation_is_over() -> None:
    w = World(judge_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    assert w.has("Deployment", "demo-teacher") and w.cond("TeacherReady") == "True"
    w.complete_job("demo-train")
    w.step()
    assert w.has("Job", "demo-eval") and w.has("Deployment", "demo-teacher")
    pipeline = json.loads(w.children[("ConfigMap", "demo-pipeline")]["data"]["pipeline.json"])
    assert pipeline["judge"]["baseUrl"] == "http://demo-teacher.team-a.svc:8000/v1"
    w.complete_job("demo-eval", json.dumps({"metric": "token_f1", "results": [
        {"model": "distilled-student", "prompt": "short", "score": 41.2, "rows": 10, "judge": 72.5,
         "unjudged": 1}]}), "evaluation")
    result = w.step()
    deleted = [a for a in result.actions if isinstance(a, Delete)]
    assert deleted == [Delete("Deployment", "demo-teacher"), Delete("Service", "demo-teacher")]
    assert w.status.stages["teacher"].state == StageState.REMOVED
    assert "after evaluation" in (w.status.stages["teacher"].message or "")
    assert w.reason("TeacherReady") == "RemovedAfterEvaluation"
    assert [(r.model, r.score, r.judge, r.unjudged) for r in w.status.results] == [
        ("distilled-student", 41.2, 72.5, 1)]


def test_an_endpoint_judge_lets_the_teacher_go_after_labeling() -> None:
    w = World(judge_spec(**{"evaluation.judge": {"endpoint": {"url": "https://judge.example.com/v1", "model": "j",
                                                              "apiKeySecretRef": {"name": "judge", "key": "k"}}}}))
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    assert not w.has("Deployment", "demo-teacher")
    w.complete_job("demo-train")
    w.step()
    env = w.children[("Job", "demo-eval")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge", "key": "k"}}} in env


def test_a_judging_teacher_is_removed_while_suspended_and_evaluation_resumes_once_it_serves_again() -> None:
    w = World(judge_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    w.complete_job("demo-train")
    w.step()
    assert w.has("Job", "demo-eval")
    w.spec = judge_spec(suspend=True)
    w.step()
    assert not w.has("Deployment", "demo-teacher") and w.children[("Job", "demo-eval")]["spec"]["suspend"]
    w.spec = judge_spec()
    w.step()
    # The teacher is back, not yet serving: the evaluation stays suspended and says why it waits.
    assert w.has("Deployment", "demo-teacher") and w.children[("Job", "demo-eval")]["spec"]["suspend"]
    assert w.cond("TeacherReady") == "False" and w.status.stages["teacher"].state == StageState.SUCCEEDED
    w.make_available("demo-teacher")
    w.step()
    assert not w.children[("Job", "demo-eval")]["spec"]["suspend"]
    assert w.cond("TeacherReady") == "True"


def test_evaluation_waits_for_a_judging_teacher_that_lost_its_pods() -> None:
    w = World(judge_spec())
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    w.children[("Deployment", "demo-teacher")]["status"] = {"observedGeneration": 1, "availableReplicas": 0}
    w.complete_job("demo-train")
    w.step()
    assert not w.has("Job", "demo-eval")
    assert w.status.stages["evaluation"].state == StageState.WAITING and w.reason("Evaluated") == "WaitingForJudge"
    w.make_available("demo-teacher")
    w.step()
    assert w.has("Job", "demo-eval")


def training_world(nodes: int = 2, backoff_limit: int = 3) -> World:
    """A Distillation whose training Job (a group of `nodes` pods) has just been created."""
    w = World(make_spec(**{"student.nodes": nodes}), nodes=(H100, H100))
    w.config = CONFIG.model_copy(update={"job_backoff_limit": backoff_limit})
    w.step()
    w.make_available("demo-teacher")
    w.step()
    w.complete_job("demo-label")
    w.step()
    assert w.has("Job", "demo-train")
    return w


def replacement_pod(w: World) -> dict[str, Any]:
    """The pod the Job controller makes for index 1 after a disruption the podFailurePolicy ignored."""
    pod = w.job_pod("demo-train", "training", {})
    pod["metadata"]["name"] = "demo-train-1-x"
    pod["metadata"]["annotations"] = {"batch.kubernetes.io/job-index-ignored-failure-count": "1"}
    return pod


def deletes(result: Plan) -> list[Delete]:
    return [a for a in result.actions if isinstance(a, Delete)]


def test_the_training_job_fails_whole_on_a_pods_first_counted_failure() -> None:
    job = training_world().children[("Job", "demo-train")]
    assert job["spec"]["backoffLimitPerIndex"] == 0 and job["spec"]["maxFailedIndexes"] == 0
    assert job["metadata"]["annotations"]["distillery.dev/attempt"] == "1"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_a_training_pod_lost_to_a_disruption_restarts_the_whole_group_from_its_checkpoint() -> None:
    w = training_world(nodes=2)
    w.pods.append(replacement_pod(w))
    result = w.step()
    assert deletes(result) == [Delete("Job", "demo-train", propagation="Foreground")]
    record = w.status.stages["training"]
    assert record.attempts == 2 and record.failures is None and record.state == StageState.RUNNING
    assert w.reason("Trained") == "RestartingGroup" and "attempt 2" in record.message
    assert "replaced a pod lost to a disruption" in record.message
    assert [e.reason for e in result.events] == ["TrainingRestarted"]
    # Passes while the old attempt's pods end (a cache that has not even seen the delete yet, too) count
    # nothing again and create nothing.
    del w.children[("Job", "demo-train")]["metadata"]["deletionTimestamp"]
    for _ in range(2):
        again = w.step()
        assert not deletes(again) and not [a for a in again.actions if isinstance(a, Create)]
        assert w.status.stages["training"].attempts == 2 and w.reason("Trained") == "RestartingGroup"
    w.gone("Job", "demo-train")
    w.step()
    job = w.children[("Job", "demo-train")]
    assert job["metadata"]["annotations"]["distillery.dev/attempt"] == "2"
    assert w.reason("Trained") == "Running"
    w.status.stages["training"].attempts = None  # a status that lost the count: the Job's annotation restores it
    w.step()
    assert w.status.stages["training"].attempts == 2 and w.reason("Trained") == "Running"
    w.complete_job("demo-train", json.dumps({"steps": 40, "total_steps": 40, "resumed_from_step": 20}), "training")
    w.step()
    assert w.status.stages["training"].state == StageState.SUCCEEDED and w.status.stages["training"].attempts == 2


def test_a_one_node_training_pod_replaced_after_a_disruption_is_the_whole_group_already() -> None:
    w = training_world(nodes=1)
    w.pods.append(replacement_pod(w))
    result = w.step()
    assert not deletes(result) and w.status.stages["training"].attempts is None
    assert w.reason("Trained") == "Running"


def test_a_failed_training_group_restarts_until_the_backoff_limit_then_fails() -> None:
    w = training_world(nodes=2, backoff_limit=1)
    w.fail_job("demo-train", "MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed "
               "indexes")
    w.pods.append(w.job_pod("demo-train", "training", {"containerStatuses": [{"state": {"terminated": {
        "message": "RuntimeError: NCCL watchdog timeout"}}}]}))
    result = w.step()
    assert deletes(result) == [Delete("Job", "demo-train", propagation="Foreground")]
    record = w.status.stages["training"]
    assert record.attempts == 2 and record.failures == 1
    assert "MaxFailedIndexesExceeded" in record.message and "NCCL watchdog timeout" in record.message
    w.gone("Job", "demo-train")
    w.step()
    assert w.children[("Job", "demo-train")]["metadata"]["annotations"]["distillery.dev/attempt"] == "2"
    w.fail_job("demo-train", "MaxFailedIndexesExceeded", "again")
    result = w.step()
    assert not deletes(result)
    assert w.status.phase == Phase.FAILED and w.reason("Stalled") == "TrainingFailed"
    assert w.status.stages["training"].failures == 2 and w.status.stages["training"].attempts == 2


def test_a_group_disrupted_at_its_last_attempt_fails_and_frees_its_gpus() -> None:
    w = training_world(nodes=2)
    w.status.stages["training"].attempts = MAX_TRAINING_ATTEMPTS
    w.children[("Job", "demo-train")]["metadata"]["annotations"]["distillery.dev/attempt"] = str(MAX_TRAINING_ATTEMPTS)
    w.pods.append(replacement_pod(w))
    result = w.step()
    # The remaining rank would wait in a collective for the lost one while holding the group's GPUs.
    assert deletes(result) == [Delete("Job", "demo-train", propagation="Foreground")]
    assert w.status.phase == Phase.FAILED and w.reason("Trained") == "TooManyRestarts"
    message = w.status.stages["training"].message or ""
    assert f"gave up after {MAX_TRAINING_ATTEMPTS} attempts" in message and "disruption" in message
    w.gone("Job", "demo-train")
    again = w.step()
    assert not [a for a in again.actions if isinstance(a, Create)] and w.status.phase == Phase.FAILED


def test_a_training_configuration_error_fails_at_once_without_a_restart() -> None:
    w = training_world(nodes=2)
    w.fail_job("demo-train", "PodFailurePolicy", "Container trainer for pod demo-train-0 failed with exit code 2")
    result = w.step()
    assert not deletes(result) and w.status.phase == Phase.FAILED
    assert w.status.stages["training"].attempts is None


def test_labeling_that_waits_for_an_unreachable_teacher_says_so() -> None:
    w = labeling_world()
    w.children[("ConfigMap", "demo-progress")]["data"] = {"labeling-00000": json.dumps({
        "rows_done": 10, "rows_ok": 10, "rows_total": 36, "teacher_unreachable_since": 1795780800,
        "teacher_error": "connection refused"})}
    w.step()
    assert w.cond("Labeled") == "False" and w.reason("Labeled") == "WaitingForTeacher"
    message = next(c.message for c in w.status.conditions if c.type == "Labeled")
    assert "since 2026-11-27T12:00:00Z" in message and "connection refused" in message
    assert "outageBudgetSeconds" in message
    w.children[("ConfigMap", "demo-progress")]["data"] = {"labeling-00000": json.dumps({
        "rows_done": 11, "rows_ok": 11, "rows_total": 36})}
    w.step()
    assert w.reason("Labeled") == "Running"


def test_a_stage_pod_whose_volume_cannot_mount_says_why() -> None:
    w = labeling_world()
    pod = w.job_pod("demo-label", "labeling", {"containerStatuses": [{"state": {"waiting": {
        "reason": "ContainerCreating"}}}]})
    pod["metadata"]["creationTimestamp"] = format_time(w.now - timedelta(seconds=MOUNT_GRACE_SECONDS - 1))
    assert creating_too_long([pod], w.now) == []
    pod["metadata"]["creationTimestamp"] = format_time(w.now - timedelta(seconds=MOUNT_GRACE_SECONDS))
    assert creating_too_long([pod], w.now) == [pod]
    failure = mount_failure([
        {"reason": "Scheduled", "message": "assigned", "lastTimestamp": "2026-11-27T12:00:00Z"},
        {"reason": "FailedMount", "message": "old", "lastTimestamp": "2026-11-27T12:00:10Z"},
        {"reason": "FailedAttachVolume", "message": 'AttachVolume.Attach failed for volume "pvc-1": disk in use',
         "lastTimestamp": "2026-11-27T12:00:20Z"}])
    assert failure == ("FailedAttachVolume", 'AttachVolume.Attach failed for volume "pvc-1": disk in use')
    w.pods.append(pod)
    observed = observe(OWNER.name, w.children.values(), w.pods, w.nodes, pod_events={"demo-label-0": failure})
    result = plan(OWNER, 1, w.spec, w.status, observed, w.now, w.config)
    labeled = next(c for c in result.status.conditions if c.type == "Labeled")
    assert labeled.reason == "FailedAttachVolume" and "pod demo-label-0: AttachVolume.Attach failed" in labeled.message
