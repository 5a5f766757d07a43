"""Simulated GPU node pools: a YAML description turned into kwok-managed Node objects.

A profile (`nodepools-<profile>.yaml`) describes the labels and taints one kind of cluster really puts on
its GPU nodes, so placement is tested against what AKS, EKS or GKE set rather than against our own labels.
"""

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

PROFILES = ("gfd", "aks", "eks", "gke")
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
POOL_LABEL = "distillery.dev/node-pool"
GPU_RESOURCE = "nvidia.com/gpu"


def profile_path(profile: str) -> Path:
    if profile not in PROFILES:
        raise ValueError(f"unknown node-pool profile {profile!r}; one of {', '.join(PROFILES)}")
    return Path(__file__).with_name(f"nodepools-{profile}.yaml")


DEFAULT_NODEPOOLS = profile_path("gfd")


class Taint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    value: str | None = None
    effect: str = Field(pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")


class NodePool(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    region: str
    zones: list[str] = Field(min_length=1)
    count: int = Field(ge=0, le=1000)
    instance_type: str = Field(alias="instanceType")
    gpus: int = Field(0, ge=0, le=64)
    """nvidia.com/gpu capacity per node (the device plugin's resource, the same on every cloud)."""
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    labels: dict[str, str] = Field(default_factory=dict)
    """The labels the cloud (or GPU feature discovery) sets, beyond the well-known topology ones."""
    taints: list[Taint] = Field(default_factory=list)


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
            name = f"{pool.name}-{i}"
            labels = {
                **pool.labels,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/region": pool.region,
                "topology.kubernetes.io/zone": pool.zones[i % len(pool.zones)],
                "node.kubernetes.io/instance-type": pool.instance_type,
                POOL_LABEL: pool.name,
            }
            resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
            if pool.gpus:
                resources[GPU_RESOURCE] = str(pool.gpus)
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                    },
                    "spec": {"taints": [t.model_dump(exclude_none=True) for t in pool.taints]},
                    "status": {"capacity": resources, "allocatable": resources},
                }
            )
    return nodes
