"""The operator on the real control plane, with kwok running the stage pods."""

import json
import random
import time

import pytest

from tests.cluster.distillations import children, condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

def test_apply_to_succeeded_with_children_in_order_on_the_regions_gpu_nodes(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(distillation("nli"), namespace=namespace)
    first_seen: dict[str, float] = {}
    placements: dict[str, set[str]] = {}
    deadline = time.monotonic() + 120
    dist = None

    def record() -> None:
        for key in children(kube, namespace, "nli"):
            first_seen.setdefault(key, time.monotonic())
        for pod in kube.get("pods", namespace=namespace)["items"]:
            stage = pod["metadata"]["labels"].get("distillery.dev/stage")
            if stage and pod["spec"].get("nodeName"):
                placements.setdefault(stage, set()).add(pod["spec"]["nodeName"])

    while time.monotonic() < deadline:
        record()
        dist = kube.get("distillation", "nli", namespace)
        if (condition(dist, "Succeeded") or {}).get("status") == "True":
            break
        time.sleep(0.3)
    assert (condition(dist, "Succeeded") or {}).get("status") == "True", (dist or {}).get("status")
    record()  # what was made between the last poll and the status read
    assert condition(dist, "Ready")["status"] == "True"
    status = dist["status"]
    assert status["phase"] == "Succeeded"
    assert status["observedGeneration"] == dist["metadata"]["generation"]
    assert status["studentEndpoint"] == f"http://nli-student.{namespace}.svc:8000/v1"
    assert all(status["stages"][s]["state"] in ("Succeeded", "Removed")
               for s in ("teacher", "labeling", "training", "evaluation", "serving"))

    order = [k for k, _ in sorted(first_seen.items(), key=lambda kv: kv[1])]
    stage_order = ["Deployment/nli-teacher", "Job/nli-label", "Job/nli-train", "Job/nli-eval",
                   "Deployment/nli-student"]
    assert [k for k in order if k in stage_order] == stage_order
    # The teacher is gone once labeling is done; everything else stays.
    final = children(kube, namespace, "nli")
    assert "Deployment/nli-teacher" not in final and "Service/nli-teacher" not in final
    assert {"PersistentVolumeClaim/nli-workspace", "ConfigMap/nli-pipeline", "Job/nli-label", "Job/nli-train",
            "Service/nli-train", "Job/nli-eval", "Deployment/nli-student", "Service/nli-student"} <= set(final)
    for child in final.values():
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["kind"] == "Distillation" and ref["name"] == "nli" and ref["controller"] is True

    for stage in ("teacher", "training", "evaluation", "serving"):
        assert placements.get(stage), f"no pod seen for {stage}"
        for node_name in placements[stage]:
            labels = kube.get("node", node_name)["metadata"]["labels"]
            assert labels["topology.kubernetes.io/region"] == "westus3", (stage, node_name)
            assert labels["nvidia.com/gpu.product"].startswith("NVIDIA-H100"), (stage, node_name)
    assert len(placements["training"]) == 2, "two training nodes, one pod each"

    events = kube.get("events", namespace=namespace)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "nli"}
    assert {"Created", "StageSucceeded", "Deleted", "StudentReady"} <= reasons
    printed = kube.run("get", "distillation", "nli", "-n", namespace).stdout
    assert "PHASE" in printed and "Succeeded" in printed and "westus3" in printed


def test_injected_training_failure_ends_failed_and_stalled_with_the_reason(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    manifest = distillation("broken", scheduling={"podAnnotations": {"chaos.distillery.dev/fail-stage": "training"}})
    kube.apply(manifest, namespace=namespace)
    dist = kube.wait_for(
        lambda: (d := kube.get("distillation", "broken", namespace)) and
        (condition(d, "Stalled") or {}).get("status") == "True" and d, 120, what="Stalled")
    assert dist["status"]["phase"] == "Failed"
    failed = condition(dist, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "TrainingFailed"
    # Each failure failed the whole group's Job at once; the operator restarted it jobBackoffLimit (3) times.
    assert "MaxFailedIndexesExceeded" in failed["message"]
    training = dist["status"]["stages"]["training"]
    assert training["attempts"] == 4 and training["failures"] == 4, training
    assert condition(dist, "Trained")["status"] == "False"
    assert dist["status"]["stages"]["labeling"]["state"] == "Succeeded"
    # The status that says Failed was planned from the failed Job: that pass created no evaluation.
    assert "Job/broken-eval" not in children(kube, namespace, "broken")
    warnings = [e for e in kube.get("events", namespace=namespace)["items"]
                if e["involvedObject"]["name"] == "broken" and e["type"] == "Warning"]
    assert any(e["reason"] == "StageFailed" and len(e["message"]) < 1024 for e in warnings)


def test_a_configuration_error_fails_training_on_the_first_attempt(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    """The trainer's configuration exit code (2) fails the Job through its podFailurePolicy at once: no
    retries on GPUs, and the condition says why."""
    broken = {"chaos.distillery.dev/fail-stage": "training", "chaos.distillery.dev/exit-code": "2"}
    kube.apply(distillation("misconfigured", scheduling={"podAnnotations": broken}), namespace=namespace)
    dist = kube.wait_for(
        lambda: (d := kube.get("distillation", "misconfigured", namespace)) and
        (condition(d, "Stalled") or {}).get("status") == "True" and d, 120, what="Stalled")
    failed = condition(dist, "Failed")
    assert failed["reason"] == "TrainingFailed" and "PodFailurePolicy" in failed["message"], failed
    job = kube.get("job", "misconfigured-train", namespace)
    assert (job["status"].get("failed") or 0) == 2, "one attempt per training pod (2 nodes), none retried"


def test_operator_killed_mid_pipeline_restarts_without_duplicates_and_finishes(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "6s"}
    kube.apply(distillation("resume", scheduling={"podAnnotations": slow}), namespace=namespace)
    kube.wait_for(lambda: "Job/resume-label" in children(kube, namespace, "resume"), 60, what="labeling job")
    operator.kill()
    before = {k: v["metadata"]["uid"] for k, v in children(kube, namespace, "resume").items()}
    operator.start()
    kube.wait_for(lambda: (condition(kube.get("distillation", "resume", namespace), "Succeeded") or {})
                  .get("status") == "True", 150, what="Succeeded after restart")
    after = {k: v["metadata"]["uid"] for k, v in children(kube, namespace, "resume").items()}
    recreated = [k for k, uid in before.items() if k in after and after[k] != uid]
    # The teacher goes away after labeling; everything else the first operator made is still the same object.
    assert set(before) - set(after) <= {"Deployment/resume-teacher", "Service/resume-teacher"}
    assert not recreated, f"recreated after the restart: {recreated}"
    # Every Event, not only Created: a restart that reconciled before its caches filled would post a stage
    # flipping back (a Warning, then the stage's event a second time).
    events = [(e["type"], e["reason"], e["message"]) for e in kube.get("events", namespace=namespace)["items"]
              if e["involvedObject"]["name"] == "resume"]
    repeated = sorted({e for e in events if events.count(e) > 1})
    assert not repeated, f"posted more than once: {repeated}"
    assert not [e for e in events if e[0] == "Warning"], events
    jobs = kube.get("jobs", namespace=namespace)["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == ["resume-eval", "resume-label", "resume-train"]


def test_suspend_and_resume_keep_progress(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "30s"}
    kube.apply(distillation("pause", scheduling={"podAnnotations": slow}), namespace=namespace)
    kube.wait_for(lambda: "Job/pause-label" in children(kube, namespace, "pause"), 60, what="labeling job")
    kube.run("patch", "distillation", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    kube.wait_for(lambda: kube.get("job", "pause-label", namespace)["spec"].get("suspend") is True, 30,
                  what="job suspended")
    dist = kube.wait_for(lambda: ((d := kube.get("distillation", "pause", namespace)).get("status") or {}).get("phase")
                         == "Suspended" and d, 30, what="Suspended phase")
    assert condition(dist, "Suspended")["status"] == "True"
    kube.wait_for(lambda: "Deployment/pause-teacher" not in children(kube, namespace, "pause"), 30,
                  what="teacher released")
    kube.run("patch", "distillation", "pause", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    kube.wait_for(lambda: kube.get("job", "pause-label", namespace)["spec"].get("suspend") is False, 60,
                  what="job resumed")
    dist = kube.get("distillation", "pause", namespace)
    assert dist["status"]["phase"] == "Labeling"


def test_waits_with_a_condition_when_no_pool_in_the_region_fits(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    manifest = distillation("nofit", region="eastus2")  # eastus2 has A100s only
    kube.apply(manifest, namespace=namespace)
    dist = kube.wait_for(lambda: (d := kube.get("distillation", "nofit", namespace)) and
                         (condition(d, "TeacherReady") or {}).get("reason") == "NoMatchingGPUNodePool" and d,
                         60, what="NoMatchingGPUNodePool")
    assert condition(dist, "Stalled")["status"] == "False"
    assert condition(dist, "Reconciling")["reason"] == "NoMatchingGPUNodePool"
    assert "Deployment/nofit-teacher" not in children(kube, namespace, "nofit")


def test_deleting_the_distillation_removes_its_children(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(distillation("gone"), namespace=namespace)
    kube.wait_for(lambda: "Deployment/gone-teacher" in children(kube, namespace, "gone"), 60, what="teacher")
    kube.run("delete", "distillation", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    kube.wait_for(lambda: not children(kube, namespace, "gone"), 60, what="children garbage-collected")


def test_a_missing_model_claim_is_reported_on_the_stage(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    manifest = distillation("noclaim", student={"model": "pvc://missing-models/student", "gpuType": "H100",
                                                "gpusPerNode": 8})
    kube.apply(manifest, namespace=namespace)
    dist = kube.wait_for(lambda: (d := kube.get("distillation", "noclaim", namespace)) and
                         (condition(d, "Trained") or {}).get("reason") == "Unschedulable" and d, 90,
                         what="Trained=False Unschedulable")
    assert "missing-models" in condition(dist, "Trained")["message"]
    assert condition(dist, "Stalled")["status"] == "False"
    assert "missing-models" in condition(dist, "Reconciling")["message"]


PIPELINE_EVENTS = ["TeacherReady", "Stage labeling succeeded", "Stage training succeeded",
                   "Stage evaluation succeeded", "StudentReady"]


@pytest.mark.parametrize("count", [1, 20], ids=["one", "twenty"])
def test_operator_killed_at_thirty_moments_finishes_every_pipeline_exactly_once(
        count: int, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "4s"}
    names = [f"chaos-{i}" for i in range(count)]
    # One GPU per pod. With whole-node teachers and training, the twenty student servers (which stay) land
    # wherever the scheduler spreads them; should they touch enough of the 8 nodes, no later teacher or training
    # group could find a whole node and the pipelines would wait on the scheduler, not on the operator under test.
    # Smaller pods also let more of each pipeline run while the operator is being killed.
    one_gpu = {"teacher": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpuType": "H100", "gpus": 1},
               "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpuType": "H100", "nodes": 2, "gpusPerNode": 1}}
    kube.apply(*(distillation(n, scheduling={"podAnnotations": slow}, **one_gpu) for n in names),
               namespace=namespace)
    moments = random.Random(20261128 + count)  # the same 30 moments on every run
    for _ in range(30):
        operator.start_if_stopped()
        time.sleep(moments.uniform(0.2, 2.5))  # when the next kill lands; nothing is asserted on time
        operator.kill()
    operator.start()
    for name in names:
        try:
            kube.wait_for(lambda n=name: (condition(kube.get("distillation", n, namespace), "Succeeded") or {})
                          .get("status") == "True", 300, what=f"{name} Succeeded")
        except AssertionError as stuck:
            raise AssertionError(f"{stuck}\n{where_it_stopped(kube, namespace, name, operator)}") from None

    every = kube.get("events", namespace=namespace)["items"]
    for name in names:
        posted = [e for e in every if e["involvedObject"]["name"] == name]
        keys = [(e["type"], e["reason"], e["message"]) for e in posted]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        assert not repeated, f"{name}: posted more than once: {repeated}"
        created = [m for _, reason, m in keys if reason == "Created"]
        assert len(created) == len(set(created)), f"{name}: a child was created twice"
        # Stage events in pipeline order (Events carry whole seconds, so order is 'not earlier than').
        stamps = [min((e["firstTimestamp"] for e in posted
                       if e["reason"] == step or e["message"].startswith(step)), default=None)
                  for step in PIPELINE_EVENTS]
        present = [s for s in stamps if s is not None]
        assert present == sorted(present), f"{name}: stage events out of order: {stamps}"
        assert not [k for k in keys if k[0] == "Warning"], f"{name}: {keys}"
    uids = [j["metadata"]["ownerReferences"][0]["uid"] for j in kube.get("jobs", namespace=namespace)["items"]]
    assert len(uids) == 3 * count and all(uids.count(u) == 3 for u in uids), "one Job per stage per Distillation"


def where_it_stopped(kube: Kube, namespace: str, name: str, operator: OperatorProcess) -> str:
    """What a stuck pipeline's reader needs: its status, its children and pods, the operator's last words."""
    status = kube.get("distillation", name, namespace).get("status") or {}
    pods = [(p["metadata"]["name"], p["status"].get("phase"), p["spec"].get("nodeName"))
            for p in kube.get("pods", namespace=namespace)["items"] if p["metadata"]["name"].startswith(f"{name}-")]
    return (f"status: {json.dumps(status, indent=1)}\nchildren: {sorted(children(kube, namespace, name))}\n"
            f"pods: {pods}\noperator log (last start):\n{operator.log_of_start(operator.starts)[-6000:]}")
