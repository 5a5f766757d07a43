"""Workspace claims on a cluster whose default class is a disk: the simulated provisioner binds ReadWriteMany
claims only for a class that supports them (kwok-volume), never for the disk class (kwok-disk)."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.cluster import DevCluster
from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

SOLO = {"student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpuType": "H100", "nodes": 1, "gpusPerNode": 8}}


@pytest.fixture
def start_operator(cluster: DevCluster, crd: None, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(**config: Any) -> OperatorProcess:
        path = tmp_path / "operator.yaml"
        path.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"},
                                        "resync_seconds": 10, **config}))
        op = OperatorProcess(cluster.kubeconfig, tmp_path, path)
        op.start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def succeeded(kube: Kube, namespace: str, name: str) -> bool:
    return (condition(kube.get("distillation", name, namespace), "Succeeded") or {}).get("status") == "True"


def test_shared_workspaces_bind_on_the_shared_class_and_single_pod_ones_on_disks(
        kube: Kube, namespace: str, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator(storage_class_name="kwok-disk", shared_storage_class_name="kwok-volume")
    kube.apply(distillation("multi"), distillation("solo", **SOLO), namespace=namespace)
    kube.wait_for(lambda: succeeded(kube, namespace, "multi") and succeeded(kube, namespace, "solo"), 120,
                  interval=0.5, what="both Succeeded")
    multi = kube.get("pvc", "multi-workspace", namespace)
    assert multi["spec"]["accessModes"] == ["ReadWriteMany"] and multi["spec"]["storageClassName"] == "kwok-volume"
    solo = kube.get("pvc", "solo-workspace", namespace)
    assert solo["spec"]["accessModes"] == ["ReadWriteOnce"] and solo["spec"]["storageClassName"] == "kwok-disk"
    assert multi["status"]["phase"] == solo["status"]["phase"] == "Bound"


def test_a_shared_workspace_on_a_disk_class_never_binds_and_the_stage_says_why(
        kube: Kube, namespace: str, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator(storage_class_name="kwok-disk")
    kube.apply(distillation("multi"), namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        dist = kube.get("distillation", "multi", namespace)
        labeled = condition(dist, "Labeled") or {}
        return labeled if labeled.get("reason") == "Unschedulable" else None

    labeled = kube.wait_for(unschedulable, 90, interval=0.5, what="Labeled=False, Unschedulable")
    assert "unbound" in labeled["message"] and "PersistentVolumeClaim" in labeled["message"], labeled
    pvc = kube.get("pvc", "multi-workspace", namespace)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "kwok-disk"
    assert pvc["status"]["phase"] == "Pending"
