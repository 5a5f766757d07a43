"""The whole pipeline on each node-pool profile (GFD, AKS, EKS, GKE labels and taints), with the operator
configured by the chart's default values: no profile needs the user to edit the GPU catalogue."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.cluster import DevCluster
from distillery.devcluster.nodepools import DEFAULT_NODEPOOLS, PROFILES, NodePools, profile_path
from tests.cluster.chart import render
from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster


def h100_pool(profile: str) -> tuple[str, set[str]]:
    """The profile's H100 region and the names of its H100 pools."""
    pools = [p for p in NodePools.load(profile_path(profile)).pools if p.gpus and "h100" in p.name]
    assert pools, f"profile {profile} has no H100 pool"
    return pools[0].region, {p.name for p in pools}


@pytest.fixture
def chart_default_operator(cluster: DevCluster, crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with the config.yaml the chart renders from its default values (plus fast kwok pods)."""
    configmap = next(d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    config.update(pod_annotations={"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}, resync_seconds=10,
                  namespaces=[])
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(config))
    op = OperatorProcess(cluster.kubeconfig, tmp_path, path)
    op.start()
    yield op
    op.stop()


@pytest.fixture
def restore_default_nodes(cluster: DevCluster) -> Iterator[None]:
    yield
    cluster.use_nodepools(DEFAULT_NODEPOOLS)


@pytest.mark.parametrize("profile", PROFILES)
def test_pipeline_succeeds_on_the_profiles_gpu_nodes(
        profile: str, cluster: DevCluster, kube: Kube, namespace: str, restore_default_nodes: None,
        chart_default_operator: OperatorProcess) -> None:
    cluster.use_nodepools(profile_path(profile))
    region, h100_pools = h100_pool(profile)
    kube.apply(distillation("p", region=region), namespace=namespace)
    placements: dict[str, set[str]] = {}

    def succeeded() -> dict[str, Any] | None:
        for pod in kube.get("pods", namespace=namespace)["items"]:
            stage = pod["metadata"]["labels"].get("distillery.dev/stage")
            if stage and pod["spec"].get("nodeName"):
                placements.setdefault(stage, set()).add(pod["spec"]["nodeName"])
        dist = kube.get("distillation", "p", namespace) or {}
        waiting = [c for c in (dist.get("status") or {}).get("conditions") or []
                   if c.get("reason") == "NoMatchingGPUNodePool"]
        assert not waiting, f"on {profile}: {waiting[0]['message']}"
        return dist if (condition(dist, "Succeeded") or {}).get("status") == "True" else None

    kube.wait_for(succeeded, 120, interval=0.3, what=f"Succeeded on {profile}")
    succeeded()  # pods placed between the last poll and Succeeded
    for stage in ("teacher", "training", "evaluation", "serving"):
        assert placements.get(stage), f"no {stage} pod seen"
        for name in placements[stage]:
            labels = kube.get("node", name)["metadata"]["labels"]
            assert labels["distillery.dev/node-pool"] in h100_pools, (stage, name)
            assert labels["topology.kubernetes.io/region"] == region
    assert len(placements["training"]) == 2
    for name in placements["labeling"]:
        # AKS and EKS node groups leave GPU nodes untainted: the labeler's preference keeps it off them.
        node = kube.get("node", name)
        assert "nvidia.com/gpu" not in node["status"]["allocatable"], name
        assert node["metadata"]["labels"]["topology.kubernetes.io/region"] == region


def test_profiles_replace_the_nodes_with_the_clouds_labels_and_taints(
        cluster: DevCluster, kube: Kube, restore_default_nodes: None) -> None:
    cluster.use_nodepools(profile_path("aks"))
    nodes = kube.wait_for(lambda: (items := kube.get("nodes")["items"]) and all(
        n["metadata"]["labels"]["distillery.dev/node-pool"].startswith("aks-") for n in items) and items,
        60, what="only AKS nodes")
    gpu = [n for n in nodes if "nvidia.com/gpu" in n["status"]["allocatable"]]
    assert gpu and all(n["metadata"]["labels"]["kubernetes.azure.com/accelerator"] == "nvidia" for n in gpu)
    assert not any("nvidia.com/gpu.product" in n["metadata"]["labels"] for n in nodes)
    assert not any(n["spec"].get("taints") for n in gpu), "AKS sets no GPU taint by default"
    assert {n["metadata"]["labels"]["node.kubernetes.io/instance-type"] for n in gpu} == {
        "Standard_ND96isr_H100_v5", "Standard_ND96amsr_A100_v4"}
