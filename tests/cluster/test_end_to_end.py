"""Operator and real workloads together: the stage pods' programs run through the local kubelet
(DeepSpeed on CPU, a tiny student) and their results reach the Distillation's status."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.demo import LocalWorkloads, local_sample, models_claim
from distillery.workloads.labels import read_labels
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.workload]


def run_to_the_end(kube: Kube, namespace: str, tmp_path: Path,
                   edit: Callable[[dict[str, Any]], None] | None = None,
                   while_running: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The local sample (after `edit`) through the operator and the local kubelet until it has Succeeded or
    Failed; `while_running(name)` checks something on the way."""
    config = tmp_path / "operator.yaml"
    # Pods finish when their program does; kwok must not complete them first.
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "24h"}}))
    operator = OperatorProcess(kube.kubeconfig, tmp_path, config)
    operator.start()
    manifest = local_sample()
    manifest["metadata"]["namespace"] = namespace
    if edit is not None:
        edit(manifest)
    name = manifest["metadata"]["name"]
    workloads = LocalWorkloads(manifest, kube.kubeconfig, tmp_path / "local")
    try:
        workloads.start()
        kube.apply(models_claim(namespace), manifest, namespace=namespace)
        if while_running is not None:
            while_running(name)
        finished: dict[str, Any] = kube.wait_for(
            lambda: ((d := kube.get("distillation", name, namespace)).get("status") or {}).get("phase")
            in ("Succeeded", "Failed") and d, 600, interval=2, what="a finished pipeline")
        return finished
    finally:
        workloads.stop()
        operator.stop()


def test_real_workloads_take_a_distillation_to_succeeded_with_results(
        kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    dist = run_to_the_end(kube, namespace, tmp_path)
    status = dist["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"]["rowsLabeled"] == 36
    assert status["progress"]["trainStep"] == status["progress"]["trainSteps"] > 0
    scores = {r["model"]: r["score"] for r in status["results"]}
    assert set(scores) == {"teacher", "base-student", "distilled-student"}
    assert scores["distilled-student"] > scores["base-student"]
    pods = kube.get("pods", namespace=namespace, selector="distillery.dev/stage=training")["items"]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_a_student_that_misses_the_quality_gate_is_not_served(
        kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    """The real pipeline with a gate the tiny student cannot pass: the Distillation fails with QualityGateFailed
    and the numbers, no student Deployment is made, and the trained adapter is left in the workspace."""
    def gated(manifest: dict[str, Any]) -> None:
        manifest["metadata"]["name"] = "gated"
        manifest["spec"]["evaluation"] = {"gate": {"minScore": 100}}

    dist = run_to_the_end(kube, namespace, tmp_path, gated)
    status = dist["status"]
    distilled = next(r["score"] for r in status["results"] if r["model"] == "distilled-student")
    assert distilled < 100, f"the tiny student scored {distilled}: this gate no longer tests a failing student"
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "QualityGateFailed")
    assert f"distilled-student accuracy {distilled:.2f} is below minScore 100" in failed["message"]
    assert kube.get("deployment", "gated-student", namespace) is None
    adapters = list((tmp_path / "local").rglob("train/adapter/adapter_config.json"))
    assert adapters, "the trained adapter is not in the workspace"


def test_two_teachers_vote_and_the_pipeline_succeeds_with_per_teacher_status(
        kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    """Two in-cluster teachers (two Deployments, started together) vote; the second answers wrong on a share of
    the rows, so some rows tie and are rejected, and both teachers' agreement reaches the status."""
    name = "nli-two-teachers"

    def two_teachers(manifest: dict[str, Any]) -> None:
        manifest["metadata"]["name"] = name
        member = manifest["spec"].pop("teacher")
        manifest["spec"]["teachers"] = [{**member, "name": "right", "minSuccessRatio": 0.5},
                                        {**member, "name": "sloppy", "minSuccessRatio": 0.5}]
        manifest["spec"]["teacherStrategy"] = {"mode": "vote"}

    def both_deployments(name: str) -> None:
        kube.wait_for(lambda: {f"{name}-teacher-0", f"{name}-teacher-1"} <= {
            d["metadata"]["name"] for d in kube.get("deployments", namespace=namespace)["items"]},
            120, interval=1, what="both teachers' Deployments")

    dist = run_to_the_end(kube, namespace, tmp_path, two_teachers, both_deployments)
    status = dist["status"]
    assert status["phase"] == "Succeeded", status
    progress = status["progress"]
    assert progress["rowsLabeled"] + progress["rowsRejected"] == 36
    assert 0 < progress["rowsDisagreed"] == progress["rowsRejected"], "two teachers that disagree tie"
    teachers = {t["name"]: t for t in status["teachers"]}
    assert teachers["right"]["rowsAnswered"] == teachers["sloppy"]["rowsAnswered"] == 36
    assert teachers["right"]["rowsAgreed"] == teachers["sloppy"]["rowsAgreed"] == progress["rowsLabeled"]
    assert teachers["right"]["gpuHours"] > 0 and teachers["sloppy"]["gpuHours"] > 0
    assert status["stages"]["teacher"]["state"] == "Removed"
    assert not [d for d in kube.get("deployments", namespace=namespace)["items"]
                if d["metadata"]["name"].startswith(f"{name}-teacher")], "teachers removed together"


def test_logit_distillation_runs_through_the_operator_with_the_teachers_log_probabilities(
        kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    """student.loss kd end to end: the labeling pod asks the teacher (the local one, which answers with the tiny
    models' own tokens) for top-k log-probabilities, stores them beside the labels, and the training pod adds the
    KL term on the examples whose text lines up with the teacher's tokens."""
    def kd(manifest: dict[str, Any]) -> None:
        manifest["metadata"]["name"] = "nli-kd"
        manifest["spec"]["student"].update({"includeRationale": True, "loss": {
            "type": "kd", "weight": 0.5, "temperature": 2.0, "topLogprobs": 4}})

    dist = run_to_the_end(kube, namespace, tmp_path, kd)
    assert dist["status"]["phase"] == "Succeeded", dist["status"]
    [labels_dir] = [d for d in (tmp_path / "local").rglob("labels") if d.is_dir()]
    stored = [r for r in read_labels(labels_dir, "train") if r.status == "ok"]
    assert stored and all(r.logprobs for r in stored), "every accepted label keeps its log-probabilities"
    [pod] = kube.get("pods", namespace=namespace, selector="distillery.dev/stage=training")["items"]
    summary = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert summary["kd_examples"] > 0 and summary["kd_missing"] == 0, summary
    assert summary["kd_examples"] + summary["kd_unaligned"] == summary["examples"], summary
