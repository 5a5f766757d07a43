"""The workspace claim's shape: access modes from how many pods mount it at once, and the class that gives them."""

from typing import Any

import pytest

from distillery.api.config import OperatorConfig
from distillery.api.spec import DistillationSpec
from distillery.resources.common import Owner
from distillery.resources.workspace import workspace_pvc

OWNER = Owner("d", "ns", "uid")
DISKS = OperatorConfig(storage_class_name="managed-csi", shared_storage_class_name="azurefile-csi")


def spec(**overrides: Any) -> DistillationSpec:
    data: dict[str, Any] = {
        "task": "nli", "region": "westus3",
        "teacher": {"model": "m"},
        "dataset": {"train": {"rows": [{"premise": "p", "hypothesis": "h", "label": "entailment"}]}},
        "student": {"model": "s"},
    }
    data.update(overrides)
    return DistillationSpec.model_validate(data)


@pytest.mark.parametrize(("case", "overrides", "modes", "storage_class"), [
    ("one pod per stage", {}, ["ReadWriteOnce"], "managed-csi"),
    ("labeling shards", {"teacher": {"model": "m", "replicas": 3}}, ["ReadWriteMany"], "azurefile-csi"),
    ("endpoint teacher shards by concurrency",
     {"teacher": {"endpoint": {"url": "http://t/v1", "model": "t"}, "concurrency": 256}},
     ["ReadWriteMany"], "azurefile-csi"),
    ("serving replicas", {"serving": {"replicas": 2}}, ["ReadWriteMany"], "azurefile-csi"),
    ("serving replicas, serving disabled", {"serving": {"replicas": 2, "enabled": False}},
     ["ReadWriteOnce"], "managed-csi"),
    ("training nodes", {"student": {"model": "s", "nodes": 4}}, ["ReadWriteMany"], "azurefile-csi"),
    ("override", {"student": {"model": "s", "nodes": 4}, "storage": {"accessModes": ["ReadWriteOnce"]}},
     ["ReadWriteOnce"], "managed-csi"),
    ("class named by the Distillation", {"serving": {"replicas": 2}, "storage": {"storageClassName": "nfs"}},
     ["ReadWriteMany"], "nfs"),
])
def test_workspace_claim_shape(case: str, overrides: dict[str, Any], modes: list[str], storage_class: str) -> None:
    pvc = workspace_pvc(OWNER, spec(**overrides), DISKS)
    assert pvc["spec"]["accessModes"] == modes, case
    assert pvc["spec"]["storageClassName"] == storage_class, case
    assert pvc["spec"]["resources"] == {"requests": {"storage": "50Gi"}}


def test_without_a_shared_class_a_shared_workspace_uses_the_default_or_the_clusters() -> None:
    shared = spec(serving={"replicas": 2})
    assert workspace_pvc(OWNER, shared, OperatorConfig(storage_class_name="fs"))["spec"]["storageClassName"] == "fs"
    assert "storageClassName" not in workspace_pvc(OWNER, shared, OperatorConfig())["spec"]
