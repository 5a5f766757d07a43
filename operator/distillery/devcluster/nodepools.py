"""Simulated GPU node pools: a YAML description turned into kwok-managed Node objects."""

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_NODEPOOLS = Path(__file__).with_name("nodepools.yaml")
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


class GpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product: str
    count: int = Field(ge=1, le=64)


class NodePool(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    region: str
    zones: list[str] = Field(min_length=1)
    count: int = Field(ge=0, le=1000)
    instance_type: str = Field(alias="instanceType")
    gpu: GpuSpec | None = None
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110


class NodePools(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pools: list[NodePool]

    @classmethod
    def load(cls, path: Path = DEFAULT_NODEPOOLS) -> "NodePools":
        return cls.model_validate(yaml.safe_load(path.read_text()))


def node_manifests(pools: NodePools) -> list[dict[str, Any]]:
    nodes = []
    for pool in pools.pools:
        for i in range(pool.count):
            zone = pool.zones[i % len(pool.zones)]
            labels = {
                "kubernetes.io/hostname": f"{pool.name}-{i}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/region": pool.region,
                "topology.kubernetes.io/zone": zone,
                "node.kubernetes.io/instance-type": pool.instance_type,
                "distillery.dev/node-pool": pool.name,
            }
            resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
            taints = []
            if pool.gpu:
                labels[GPU_PRODUCT_LABEL] = pool.gpu.product
                labels["nvidia.com/gpu.count"] = str(pool.gpu.count)
                resources[GPU_RESOURCE] = str(pool.gpu.count)
                taints.append(GPU_TAINT)
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": f"{pool.name}-{i}",
                        "labels": labels,
                        "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                    },
                    "spec": {"taints": taints},
                    "status": {"capacity": resources, "allocatable": resources},
                }
            )
    return nodes
