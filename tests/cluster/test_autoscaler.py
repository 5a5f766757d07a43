"""GPU pools that scale from zero: Karpenter (kwok provider, v1.15) adds nodes for pending stage pods."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from distillery.devcluster import karpenter
from distillery.devcluster.cluster import DevCluster
from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

H100_POOL = karpenter.POOLS[0][0]
NODEPOOL_LABEL = "karpenter.sh/nodepool"


@pytest.fixture(scope="module")
def autoscaler(cluster: DevCluster) -> Iterator[None]:
    cluster.start_karpenter()
    yield
    cluster.stop_karpenter()


@pytest.fixture
def scaling_operator(cluster: DevCluster, crd: None, autoscaler: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"},
                                      "resync_seconds": 10, "capacity_check": "none"}))
    op = OperatorProcess(cluster.kubeconfig, tmp_path, config)
    op.start()
    yield op
    op.stop()


def pool_nodes(kube: Kube, pool: str) -> list[str]:
    return [n["metadata"]["name"] for n in kube.get("nodes", selector=f"{NODEPOOL_LABEL}={pool}")["items"]]


def test_a_distillation_on_a_zero_node_pool_succeeds_on_added_nodes_that_go_afterwards(
        kube: Kube, namespace: str, scaling_operator: OperatorProcess) -> None:
    kube.wait_for(lambda: not pool_nodes(kube, H100_POOL), 120, what=f"{H100_POOL} at zero nodes")
    assert not kube.get("nodes", selector="nvidia.com/gpu.present=true")["items"], "no static GPU nodes"
    kube.apply(distillation("scale", serving={"enabled": False}), namespace=namespace)

    gpu_pods_on: set[str] = set()
    added: set[str] = set()
    deadline = time.monotonic() + 300
    dist = None
    while time.monotonic() < deadline:
        for pod in kube.get("pods", namespace=namespace)["items"]:
            stage = pod["metadata"]["labels"].get("distillery.dev/stage")
            if stage in ("teacher", "training", "evaluation") and pod["spec"].get("nodeName"):
                gpu_pods_on.add(pod["spec"]["nodeName"])
        added |= set(pool_nodes(kube, H100_POOL))
        dist = kube.get("distillation", "scale", namespace)
        if (condition(dist, "Succeeded") or {}).get("status") == "True":
            break
        time.sleep(0.5)
    assert (condition(dist, "Succeeded") or {}).get("status") == "True", (dist or {}).get("status")
    assert gpu_pods_on and gpu_pods_on <= added, (gpu_pods_on, added)
    # Nothing runs on them any more: Karpenter consolidates the empty nodes away.
    kube.wait_for(lambda: not set(pool_nodes(kube, H100_POOL)) & gpu_pods_on, 180, what="added nodes removed")


def test_a_gpu_type_no_node_pool_offers_waits_with_the_schedulers_reason(
        kube: Kube, namespace: str, scaling_operator: OperatorProcess) -> None:
    manifest = distillation("nol4", teacher={"model": "m", "gpuType": "L4", "gpus": 8, "tensorParallelSize": 8})
    kube.apply(manifest, namespace=namespace)
    dist = kube.wait_for(lambda: (d := kube.get("distillation", "nol4", namespace)) and
                         (condition(d, "TeacherReady") or {}).get("reason") == "Unschedulable" and d,
                         120, what="TeacherReady=False Unschedulable")
    message = condition(dist, "TeacherReady")["message"]
    assert message.startswith("pods cannot be scheduled: 0/"), message
    assert condition(dist, "Reconciling")["status"] == "True"
    claims = kube.get("nodeclaims.karpenter.sh")["items"]
    assert not [c for c in claims if "L4" in str(c["spec"].get("requirements"))], claims
