"""The local control plane's Karpenter NodePools: the nodes they would add are ones the stage pods accept."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.devcluster import karpenter
from distillery.resources.common import gpu_node_fits


def provisioned_labels(pool: dict[str, Any]) -> dict[str, str]:
    """The labels Karpenter's kwok provider puts on a node: the template's, and each single-valued
    requirement's (kwok/cloudprovider/cloudprovider.go addInstanceLabels)."""
    spec = pool["spec"]["template"]
    labels = dict(spec["metadata"]["labels"])
    labels.update({r["key"]: r["values"][0] for r in spec["spec"]["requirements"] if len(r["values"]) == 1})
    return labels


def test_each_pool_adds_nodes_only_its_own_gpu_type_and_region_accept() -> None:
    pools = {p["metadata"]["name"]: p for p in karpenter.node_pools()}
    config = OperatorConfig()
    h100, a100 = provisioned_labels(pools["westus3-h100"]), provisioned_labels(pools["eastus2-a100"])
    assert gpu_node_fits(config, h100, 8, "westus3", "H100", 8)
    assert not gpu_node_fits(config, h100, 8, "westus3", "L4", 1)
    assert gpu_node_fits(config, a100, 8, "eastus2", "A100", 8)
    assert not gpu_node_fits(config, a100, 8, "westus3", "A100", 8)


def test_pools_are_bounded_tainted_and_consolidate_empty_nodes() -> None:
    types = {t["name"]: t for t in karpenter.instance_types()}
    for pool in karpenter.node_pools():
        spec = pool["spec"]
        assert spec["limits"] == {"nvidia.com/gpu": "32"}
        assert spec["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                                        "effect": "NoSchedule"}]
        assert spec["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
        [instance_type] = next(r["values"] for r in spec["template"]["spec"]["requirements"]
                               if r["key"] == "node.kubernetes.io/instance-type")
        assert types[instance_type]["resources"]["nvidia.com/gpu"] == "8"
