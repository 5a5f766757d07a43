"""Operator configuration: image defaults, the GPU catalogue, storage and watched namespaces.

Read from a YAML file (the Helm chart mounts one) with environment overrides.
"""

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from distillery.api.spec import DEFAULT_LABELER_IMAGE, DEFAULT_TRAINER_IMAGE, DEFAULT_VLLM_IMAGE

DEFAULT_GPU_CATALOGUE: dict[str, list[str]] = {
    "H200": ["NVIDIA-H200", "NVIDIA-H200-NVL"],
    "H100": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-NVL", "NVIDIA-H100-PCIe"],
    "A100": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-PCIE-40GB"],
    "L40S": ["NVIDIA-L40S"],
    "L4": ["NVIDIA-L4"],
    "A10G": ["NVIDIA-A10G"],
}


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu_product_label: str = "nvidia.com/gpu.product"
    """Node label that carries the GPU product name (set by NVIDIA GPU feature discovery)."""
    gpu_catalogue: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_GPU_CATALOGUE))
    """GPU type as written in a Distillation -> node label values that provide it."""
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
    namespaces: list[str] = Field(default_factory=list)
    """Watched namespaces; empty means all."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Added to every stage pod (before the Distillation's own podAnnotations)."""
    job_backoff_limit: int = Field(3, ge=0, le=100)
    job_ttl_seconds_after_finished: int | None = None
    resync_seconds: float = Field(60, gt=0)
    """Periodic level-triggered re-reconcile of every Distillation, on top of watch events."""

    @classmethod
    def load(cls, path: str | None = None) -> "OperatorConfig":
        path = path or os.environ.get("DISTILLERY_CONFIG")
        data = yaml.safe_load(Path(path).read_text()) if path else {}
        return cls.model_validate(data or {})

    def gpu_products(self, gpu_type: str) -> list[str]:
        """Label values for a GPU type; an unknown type is matched literally."""
        for name, products in self.gpu_catalogue.items():
            if name.lower() == gpu_type.lower():
                return products
        return [gpu_type]
