"""Karpenter with its kwok cloud provider: GPU node pools that start at zero nodes and scale on demand.

Karpenter's kwok provider creates Node objects annotated `kwok.x-k8s.io/node: fake`, which the cluster's kwok
already manages, so provisioned nodes become Ready like the static ones. Instance types come from a file of
ours (the module's defaults have no GPUs); the NodePools mirror the gfd profile's GPU pools.
"""

from datetime import UTC, datetime
from typing import Any

from distillery.devcluster.nodepools import GPU_RESOURCE

NODE_CLASS = "default"
CONSOLIDATE_AFTER = "10s"
"""How long an empty node lives: short, so a finished Distillation's nodes go within the tests' patience."""
GFD_PRODUCT = "nvidia.com/gpu.product"
# (pool, region, zone, instance type, GPU product as GPU feature discovery labels it, node limit)
POOLS = (
    ("westus3-h100", "westus3", "westus3-1", "Standard_ND96isr_H100_v5", "NVIDIA-H100-80GB-HBM3", 4),
    ("eastus2-a100", "eastus2", "eastus2-1", "Standard_ND96amsr_A100_v4", "NVIDIA-A100-SXM4-80GB", 4),
)
GPUS_PER_NODE = 8


def instance_types() -> list[dict[str, Any]]:
    """The kwok provider's instance-types file (kwok/cloudprovider/instance_types.json format): each GPU
    instance type offered on demand in its pool's zone, the region as an offering requirement so that
    Karpenter labels the node with it."""
    return [{
        "name": instance_type,
        "architecture": "amd64",
        "operatingSystems": ["linux"],
        "resources": {"cpu": "96", "memory": "1900Gi", "pods": "110", GPU_RESOURCE: str(GPUS_PER_NODE)},
        "offerings": [{"Price": 98.32, "Available": True, "Requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]},
            {"key": "topology.kubernetes.io/region", "operator": "In", "values": [region]},
        ]}],
    } for _, region, zone, instance_type, _, _ in POOLS]


def node_class() -> dict[str, Any]:
    return {"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass", "metadata": {"name": NODE_CLASS}}


def node_class_ready() -> dict[str, Any]:
    """NodePools provision only for a Ready NodeClass, and the kwok provider has no controller to say so."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                                       "lastTransitionTime": now, "observedGeneration": 1}]}}


def node_pools() -> list[dict[str, Any]]:
    """One NodePool per GPU pool, from zero nodes up to its limit, with the labels and taint GPU feature
    discovery and the admin convention put on the static gfd pools; empty nodes go after CONSOLIDATE_AFTER."""
    return [{
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {GFD_PRODUCT: product, "nvidia.com/gpu.present": "true",
                                        "distillery.dev/autoscaled-pool": name}},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": NODE_CLASS},
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance_type]},
                        {"key": "topology.kubernetes.io/region", "operator": "In", "values": [region]},
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                    ],
                    "taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}],
                    "expireAfter": "Never",
                },
            },
            "limits": {GPU_RESOURCE: str(limit * GPUS_PER_NODE)},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": CONSOLIDATE_AFTER},
        },
    } for name, region, _, instance_type, product, limit in POOLS]
