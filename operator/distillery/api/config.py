"""Operator configuration: image defaults, the GPU catalogue, storage and watched namespaces.

Read from a YAML file (the Helm chart mounts one) with environment overrides.
"""

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillery.api.spec import DEFAULT_LABELER_IMAGE, DEFAULT_TRAINER_IMAGE, DEFAULT_VLLM_IMAGE

GFD_PRODUCT = "nvidia.com/gpu.product"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
KARPENTER_AWS_GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
EKS_AUTO_GPU_NAME = "eks.amazonaws.com/instance-gpu-name"

GpuNodeLabels = dict[str, list[str]]
"""Node label -> values that mean "this node has the GPU". Each label is one way of recognising it; a node
matching any one of them qualifies, so one catalogue serves clusters with and without GPU feature discovery."""

# Managed clusters do not run GPU feature discovery by default, so the product label alone places nothing
# there. AKS and EKS node groups are recognised by instance type (AKS's own kubernetes.azure.com/accelerator
# is just "nvidia" for every GPU), GKE by its accelerator label, Karpenter and EKS Auto Mode by GPU name.
# Sources are cited in devcluster/nodepools-<profile>.yaml, which simulates each cloud's nodes.
DEFAULT_GPU_CATALOGUE: dict[str, GpuNodeLabels] = {
    "H200": {
        GFD_PRODUCT: ["NVIDIA-H200", "NVIDIA-H200-NVL"],
        INSTANCE_TYPE: ["Standard_ND96isr_H200_v5", "p5e.48xlarge", "p5en.48xlarge"],
        GKE_ACCELERATOR: ["nvidia-h200-141gb"],
        KARPENTER_AWS_GPU_NAME: ["h200"],
        EKS_AUTO_GPU_NAME: ["h200"],
    },
    "H100": {
        GFD_PRODUCT: ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-NVL", "NVIDIA-H100-PCIe"],
        INSTANCE_TYPE: ["Standard_ND96isr_H100_v5", "Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5",
                        "p5.48xlarge", "p5.4xlarge"],
        GKE_ACCELERATOR: ["nvidia-h100-80gb", "nvidia-h100-mega-80gb"],
        KARPENTER_AWS_GPU_NAME: ["h100"],
        EKS_AUTO_GPU_NAME: ["h100"],
    },
    "A100": {
        GFD_PRODUCT: ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-80GB-PCIe",
                      "NVIDIA-A100-PCIE-40GB"],
        INSTANCE_TYPE: ["Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_NC24ads_A100_v4",
                        "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4", "p4d.24xlarge", "p4de.24xlarge"],
        GKE_ACCELERATOR: ["nvidia-tesla-a100", "nvidia-a100-80gb"],
        KARPENTER_AWS_GPU_NAME: ["a100"],
        EKS_AUTO_GPU_NAME: ["a100"],
    },
    "L40S": {
        GFD_PRODUCT: ["NVIDIA-L40S"],
        INSTANCE_TYPE: [f"g6e.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge",
                                                   "16xlarge", "24xlarge", "48xlarge")],
        KARPENTER_AWS_GPU_NAME: ["l40s"],
        EKS_AUTO_GPU_NAME: ["l40s"],
    },
    "L4": {
        GFD_PRODUCT: ["NVIDIA-L4"],
        INSTANCE_TYPE: [f"g6.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge",
                                                  "16xlarge", "24xlarge", "48xlarge")],
        GKE_ACCELERATOR: ["nvidia-l4"],
        KARPENTER_AWS_GPU_NAME: ["l4"],
        EKS_AUTO_GPU_NAME: ["l4"],
    },
    "A10G": {
        GFD_PRODUCT: ["NVIDIA-A10G"],
        INSTANCE_TYPE: [f"g5.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge",
                                                  "16xlarge", "24xlarge", "48xlarge")],
        KARPENTER_AWS_GPU_NAME: ["a10g"],
        EKS_AUTO_GPU_NAME: ["a10g"],
    },
}


NONROOT_ID = 65532
"""The stage images' user and group (distroless "nonroot")."""
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": NONROOT_ID,
    "runAsGroup": NONROOT_ID,
    # A fresh Azure Disk, EBS or PD volume has a root-owned root directory: fsGroup makes it writable, and
    # OnRootMismatch skips the recursive chown on every later mount of a workspace full of checkpoints.
    "fsGroup": NONROOT_ID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The upstream vLLM image runs as root, so runAsNonRoot would stop it from starting; everything else of
# "restricted" still applies, and fsGroup lets the student server read the workspace the trainer wrote.
SERVING_POD: dict[str, Any] = {
    "fsGroup": NONROOT_ID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu_product_label: str = GFD_PRODUCT
    """Node label that carries the GPU product name (set by NVIDIA GPU feature discovery). A catalogue entry
    given as a plain list of values, and a GPU type missing from the catalogue, are matched on it."""
    gpu_catalogue: dict[str, GpuNodeLabels] = Field(
        default_factory=lambda: {name: dict(labels) for name, labels in DEFAULT_GPU_CATALOGUE.items()})
    """GPU type as written in a Distillation -> node labels and their values that recognise it."""
    gpu_resource: str = "nvidia.com/gpu"
    gpu_toleration_key: str = "nvidia.com/gpu"
    region_label: str = "topology.kubernetes.io/region"
    labeler_image: str = DEFAULT_LABELER_IMAGE
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Training and evaluation image for Distillations that set no student.image."""
    vllm_image: str = DEFAULT_VLLM_IMAGE
    """Teacher and student serving image for Distillations that set no teacher.image / serving.image."""
    storage_class_name: str | None = None
    """Default storage class for workspaces when a Distillation names none."""
    shared_storage_class_name: str | None = None
    """Default storage class for workspaces that need ReadWriteMany (a file share: azurefile-csi, efs-sc,
    Filestore); without it they get storage_class_name, which must then support ReadWriteMany."""
    namespaces: list[str] = Field(default_factory=list)
    """Watched namespaces; empty means all."""
    workload_pod_security_context: dict[str, Any] = Field(default_factory=lambda: dict(RESTRICTED_POD))
    """Pod securityContext of the labeling, training and evaluation pods (Distillery's images, uid 65532)."""
    serving_pod_security_context: dict[str, Any] = Field(default_factory=lambda: dict(SERVING_POD))
    """Pod securityContext of the vLLM teacher and student pods; a Distillation's securityContext wins."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Added to every stage pod (before the Distillation's own podAnnotations)."""
    job_backoff_limit: int = Field(3, ge=0, le=100)
    job_ttl_seconds_after_finished: int | None = None
    resync_seconds: float = Field(60, gt=0)
    """Periodic level-triggered re-reconcile of every Distillation, on top of watch events."""
    hub_endpoint: str | None = Field(None, pattern=r"^https?://")
    """HF_ENDPOINT for every pod that reads the model hub: a hub mirror or proxy (Artifactory, Nexus) or a
    self-hosted hub; unset, the pods read huggingface.co."""
    capacity_check: Literal["nodes", "none"] = "nodes"
    """Before creating a GPU stage's pods: `nodes` waits (NoMatchingGPUNodePool) until existing nodes in the
    region could hold them; right for static pools, where a pod that can never fit is better not created.
    `none` creates them at once and leaves placement to the scheduler and the autoscaler: needed for pools that
    scale from zero (Karpenter, cluster-autoscaler), which add nodes only for pending pods; a pod nothing can
    place then shows as Unschedulable with the scheduler's message."""

    @model_validator(mode="before")
    @classmethod
    def _product_lists(cls, data: Any) -> Any:
        """A catalogue entry written as a list (the format before cloud labels) means product label values."""
        if not isinstance(data, dict) or not isinstance(data.get("gpu_catalogue"), dict):
            return data
        label = data.get("gpu_product_label", GFD_PRODUCT)
        catalogue = {name: {label: entry} if isinstance(entry, list) else entry
                     for name, entry in data["gpu_catalogue"].items()}
        return {**data, "gpu_catalogue": catalogue}

    @classmethod
    def load(cls, path: str | None = None) -> "OperatorConfig":
        path = path or os.environ.get("DISTILLERY_CONFIG")
        data = yaml.safe_load(Path(path).read_text()) if path else {}
        return cls.model_validate(data or {})

    def gpu_node_labels(self, gpu_type: str) -> GpuNodeLabels:
        """The ways to recognise a node with this GPU type; an unknown type is matched literally on the
        product label."""
        for name, labels in self.gpu_catalogue.items():
            if name.lower() == gpu_type.lower():
                return labels
        return {self.gpu_product_label: [gpu_type]}
