"""Generated inputs and reused labels through the operator, with the stage programs run by the local kubelet:
a Distillation that generates inputs and labels them, a second one that reuses those labels without a teacher,
a third whose teacher differs and is refused, and what deleting the first leaves behind."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.demo import LocalWorkloads, local_sample, models_claim
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.workload]


def phase(kube: Kube, name: str, namespace: str) -> dict[str, Any] | None:
    dist = kube.get("distillation", name, namespace) or {}
    return dist if (dist.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None


def condition(dist: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((dist or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def labeled_reason(kube: Kube, name: str, namespace: str) -> str | None:
    return condition(kube.get("distillation", name, namespace), "Labeled").get("reason")


def test_generated_inputs_are_labelled_and_the_labels_reused(
        kube: Kube, crd: None, namespace: str, tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "24h"}}))
    operator = OperatorProcess(kube.kubeconfig, tmp_path, config)
    operator.start()
    first = local_sample(train_rows=12, validation_rows=6)
    first["metadata"] = {"name": "first", "namespace": namespace}
    spec = first["spec"]
    spec["dataset"]["generate"] = {"seeds": {"rows": spec["dataset"]["train"]["rows"][:4]}, "count": 12}
    spec["student"]["epochs"] = 1
    spec["evaluation"] = {"enabled": False}
    spec["serving"] = {"enabled": False}
    second = copy.deepcopy(first)
    second["metadata"]["name"] = "second"
    second["spec"]["dataset"]["labelsFrom"] = "first"
    second["spec"]["student"]["learningRate"] = 0.02
    other_teacher = copy.deepcopy(second)
    other_teacher["metadata"]["name"] = "other-teacher"
    other_teacher["spec"]["teacher"]["model"] = "Qwen/Qwen2.5-72B-Instruct"
    root = tmp_path / "local"
    workloads = LocalWorkloads(first, kube.kubeconfig, root)
    try:
        workloads.start()
        kube.apply(models_claim(namespace), first, namespace=namespace)
        # Applied before the first has labels: they wait for them.
        kube.apply(second, other_teacher, namespace=namespace)
        kube.wait_for(lambda: labeled_reason(kube, "second", namespace) == "LabelsSourceNotReady", 120, interval=1,
                      what="second waiting for the first's labels")
        done = kube.wait_for(lambda: phase(kube, "first", namespace), 900, interval=2, what="first finished")
        status = done["status"]
        assert status["phase"] == "Succeeded", status
        generation = status["stages"]["generation"]
        assert generation["state"] == "Succeeded" and "12 kept" in generation["message"], generation
        assert status["progress"]["inputsKept"] == 12
        assert status["progress"]["inputsGenerated"] == 12 + status["progress"]["inputsRejected"]
        # The user's 12 rows, the 12 generated ones and the 6 validation rows were labelled.
        assert status["progress"]["rowsTotal"] == 30
        assert set(status["labels"]["fingerprint"]) == {"task", "teacher", "prompt", "rows"}

        reused = kube.wait_for(lambda: phase(kube, "second", namespace), 900, interval=2, what="second finished")
        status = reused["status"]
        assert status["phase"] == "Succeeded", status
        assert status["stages"]["teacher"]["state"] == "Skipped"
        assert status["stages"]["generation"]["state"] == "Skipped"
        assert "labels reused from pvc://first-workspace" in status["stages"]["labeling"]["message"], status
        assert status["labels"]["reusedFrom"] == "pvc://first-workspace"
        assert status["labels"]["fingerprint"] == done["status"]["labels"]["fingerprint"]

        refused = kube.wait_for(lambda: phase(kube, "other-teacher", namespace), 120, interval=1,
                                what="other-teacher refused")
        labeled = condition(refused, "Labeled")
        assert refused["status"]["phase"] == "Failed"
        assert labeled["reason"] == "LabelsMismatch" and "different teacher" in labeled["message"], labeled

        # Deleting the first: the second keeps its own copy; a new reuser waits for the source to come back.
        kube.run("delete", "distillation", "first", "-n", namespace, "--wait=true")
        copies = list((root / "claims").glob("second-workspace-*/labels/train-shard-00000.jsonl"))
        assert copies and copies[0].stat().st_size > 0
        assert json.loads(next((root / "claims").glob("second-workspace-*/labels/fingerprint.json")).read_text())[
            "reused_from"] == "pvc://first-workspace"
        late = copy.deepcopy(second)
        late["metadata"]["name"] = "late"
        kube.apply(late, namespace=namespace)
        kube.wait_for(lambda: labeled_reason(kube, "late", namespace) == "LabelsSourceNotFound", 120, interval=1,
                      what="late waiting for a deleted source")
        assert kube.get("distillation", "second", namespace)["status"]["phase"] == "Succeeded"
    finally:
        workloads.stop()
        operator.stop()
