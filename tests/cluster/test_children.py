"""Children the API server refuses, children another owner holds, and an API server that goes away."""

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillery.devcluster.cluster import DevCluster
from tests.cluster.chart import ChartIdentity
from tests.cluster.distillations import children, condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster
HOLD = "test.distillery.dev/hold"


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.get("events", namespace=namespace)["items"] if e["involvedObject"]["name"] == name]


def succeeded(kube: Kube, namespace: str, name: str) -> bool:
    return (condition(kube.get("distillation", name, namespace), "Succeeded") or {}).get("status") == "True"


def rejection(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    found = condition(kube.get("distillation", name, namespace), "Reconciling")
    return found if found and found.get("reason") == "ChildRejected" else None


def test_a_child_over_quota_is_reported_then_created_once_the_quota_allows(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.deny_claims(namespace)
    kube.apply(distillation("quota"), namespace=namespace)
    found = kube.wait_for(lambda: rejection(kube, namespace, "quota"), 60, what="ChildRejected")
    assert found["status"] == "True"
    assert "PersistentVolumeClaim quota-workspace" in found["message"] and "exceeded quota" in found["message"]
    warnings = [e for e in events(kube, namespace, "quota") if e["reason"] == "ChildRejected"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings

    kube.run("delete", "resourcequota", "no-claims", "-n", namespace)
    kube.wait_for(lambda: succeeded(kube, namespace, "quota"), 120, what="Succeeded after the quota went")
    assert rejection(kube, namespace, "quota") is None


@pytest.fixture
def short_of_claims(kube: Kube, namespace: str, crd: None, tmp_path: Path) -> Iterator[ChartIdentity]:
    """The chart's operator identity without the right to create PersistentVolumeClaims."""
    ident = ChartIdentity(kube, namespace, tmp_path, watch_own_namespace=False)
    claims = "persistentvolumeclaims"
    for doc in ident.rbac:
        rules = []
        for rule in doc.get("rules") or []:
            if claims in rule.get("resources", []):
                # Still allowed to watch claims (or kopf could never list them), not to create one.
                rules.append({**rule, "resources": [claims], "verbs": [v for v in rule["verbs"] if v != "create"]})
                rule = {**rule, "resources": [r for r in rule["resources"] if r != claims]}
            if rule.get("resources"):
                rules.append(rule)
        if "rules" in doc:
            doc["rules"] = rules
    ident.create()
    yield ident
    ident.delete()


def test_a_child_refused_for_missing_rbac_is_reported_with_the_api_message(
        kube: Kube, namespace: str, short_of_claims: ChartIdentity, tmp_path: Path) -> None:
    op = OperatorProcess(short_of_claims.kubeconfig, tmp_path, short_of_claims.config)
    op.start()
    try:
        kube.apply(distillation("norbac"), namespace=namespace)
        found = kube.wait_for(lambda: rejection(kube, namespace, "norbac"), 60, what="ChildRejected")
        assert "PersistentVolumeClaim norbac-workspace" in found["message"]
        assert "forbidden" in found["message"] and "cannot create resource" in found["message"], found
        warnings = [e for e in events(kube, namespace, "norbac") if e["reason"] == "ChildRejected"]
        assert [e["type"] for e in warnings] == ["Warning"], [e["message"] for e in warnings]
        assert op.proc is not None and op.proc.poll() is None, "the operator keeps running"
    finally:
        op.stop()


def test_a_recreated_distillation_runs_every_stage_itself(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "3s"}
    kube.apply(distillation("again", scheduling={"podAnnotations": slow}), namespace=namespace)
    kube.wait_for(lambda: (((kube.get("distillation", "again", namespace).get("status") or {}).get("stages") or {})
                           .get("labeling") or {}).get("state") == "Succeeded", 90, what="labeling done")
    old_job = kube.get("job", "again-label", namespace)
    # The old labeling Job outlives its Distillation, as one whose pods take time to go would.
    kube.run("patch", "job", "again-label", "-n", namespace, "--type=merge",
             "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    kube.run("delete", "distillation", "again", "-n", namespace, "--wait=true", "--timeout=60s")
    kube.wait_for(lambda: kube.get("job", "again-label", namespace)["metadata"].get("deletionTimestamp"), 60,
                  what="old Job terminating")
    kube.apply(distillation("again", scheduling={"podAnnotations": slow}), namespace=namespace)

    held = "Job again-label is being deleted and not owned by this Distillation"
    # Other children of the old one (its workspace claim, say) may be reported first while they go.
    kube.wait_for(lambda: held in ((rejection(kube, namespace, "again") or {}).get("message") or ""), 120,
                  what="the held name reported")
    stages = kube.get("distillation", "again", namespace)["status"]["stages"]
    assert stages["labeling"]["state"] != "Succeeded", "the old Job's result was taken over"

    kube.run("patch", "job", "again-label", "-n", namespace, "--type=json",
             "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    kube.wait_for(lambda: succeeded(kube, namespace, "again"), 150, what="Succeeded")
    new_job = kube.get("job", "again-label", namespace)
    assert new_job["metadata"]["uid"] != old_job["metadata"]["uid"]
    new_uid = kube.get("distillation", "again", namespace)["metadata"]["uid"]
    assert [r["uid"] for r in new_job["metadata"]["ownerReferences"]] == [new_uid]


def test_the_pipeline_finishes_across_an_api_server_outage(
        cluster: DevCluster, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "4s"}
    kube.apply(distillation("outage", scheduling={"podAnnotations": slow}), namespace=namespace)
    kube.wait_for(lambda: "Job/outage-label" in children(kube, namespace, "outage"), 60, what="labeling job")
    state = cluster.state()
    assert state is not None
    apiserver = state.pids["kube-apiserver"]
    # Stopped, not killed: connections hang, as they do when a control plane is unreachable.
    os.kill(apiserver, signal.SIGSTOP)
    try:
        time.sleep(30)  # the outage itself; nothing is asserted on time
    finally:
        os.kill(apiserver, signal.SIGCONT)
    kube.wait_for(lambda: succeeded(kube, namespace, "outage"), 180, what="Succeeded after the outage")
    assert operator.proc is not None and operator.proc.poll() is None, "the operator kept running"
    assert operator.starts == 1


def test_a_changed_replica_count_is_server_side_applied(
        kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.apply(distillation("scale"), namespace=namespace)
    kube.wait_for(lambda: succeeded(kube, namespace, "scale"), 120, what="Succeeded")
    kube.run("patch", "distillation", "scale", "-n", namespace, "--type=merge",
             "-p", '{"spec":{"serving":{"replicas":3}}}')
    deployment = kube.wait_for(lambda: (d := kube.get("deployment", "scale-student", namespace))
                               and d["spec"]["replicas"] == 3 and d, 60, what="three student replicas")
    assert deployment
    shown = json.loads(kube.run("get", "deployment", "scale-student", "-n", namespace, "-o", "json",
                                "--show-managed-fields").stdout)
    managers = {(m["manager"], m["operation"]) for m in shown["metadata"]["managedFields"]}
    assert ("distillery-operator", "Apply") in managers, managers
    updated = [e for e in events(kube, namespace, "scale") if e["reason"] == "Updated"]
    assert [e["message"] for e in updated] == ["Updated Deployment scale-student"]


@pytest.mark.parametrize(("stage", "reason", "message"), [
    ("labeling", "ImagePullBackOff", 'Back-off pulling image "ghcr.io/distillery-dev/labeler:0.1.0"'),
    ("labeling", "CreateContainerConfigError", 'secret "teacher-key" not found'),
    ("teacher", "CrashLoopBackOff", "back-off 5m0s restarting failed container=vllm"),
])
def test_a_stage_whose_pods_cannot_start_says_why(stage: str, reason: str, message: str, kube: Kube,
                                                   namespace: str, operator: OperatorProcess) -> None:
    stuck = {"chaos.distillery.dev/waiting-stage": stage, "chaos.distillery.dev/waiting-reason": reason,
             "chaos.distillery.dev/waiting-message": message}
    kube.apply(distillation("stuck", scheduling={"podAnnotations": stuck}), namespace=namespace)
    condition_type = {"labeling": "Labeled", "teacher": "TeacherReady"}[stage]
    found = kube.wait_for(lambda: (c := condition(kube.get("distillation", "stuck", namespace), condition_type))
                          and c.get("reason") == reason and c, 90, what=f"{condition_type} reason {reason}")
    assert found["status"] == "False" and message in found["message"] and "pod stuck-" in found["message"]
    if reason == "CrashLoopBackOff":
        assert "restarted 4 times" in found["message"]
    dist = kube.get("distillation", "stuck", namespace)
    assert dist["status"]["stages"][stage]["state"] == "Running", "waiting, not failed"


def test_a_stage_pod_whose_volume_cannot_mount_says_why(kube: Kube, namespace: str,
                                                        operator: OperatorProcess) -> None:
    """The kubelet says why a volume does not mount only in an Event; kwok holds the pod in ContainerCreating and
    the test posts the Event the kubelet would."""
    stuck = {"chaos.distillery.dev/waiting-stage": "labeling",
             "chaos.distillery.dev/waiting-reason": "ContainerCreating"}
    kube.apply(distillation("mount", scheduling={"podAnnotations": stuck}), namespace=namespace)
    pod = kube.wait_for(lambda: next(iter(kube.get("pods", namespace=namespace,
                                                   selector="distillery.dev/stage=labeling")["items"]), None),
                        90, what="the labeling pod")
    message = ('MountVolume.MountDevice failed for volume "pvc-0b1c" : rpc error: code = Internal desc = '
               'could not mount the file share: permission denied')
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{pod['metadata']['name']}.mount"},
             "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                                "namespace": namespace, "uid": pod["metadata"]["uid"]},
             "reason": "FailedMount", "message": message, "type": "Warning", "count": 1,
             "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
             "firstTimestamp": now, "lastTimestamp": now}
    kube.apply(event, namespace=namespace, server_side=False)
    found = kube.wait_for(lambda: (c := condition(kube.get("distillation", "mount", namespace), "Labeled"))
                          and c.get("reason") == "FailedMount" and c, 180, what="Labeled reason FailedMount")
    assert found["status"] == "False" and message in found["message"]
    assert f"pod {pod['metadata']['name']}" in found["message"]
