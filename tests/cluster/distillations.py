"""Distillations for the cluster tests: a manifest to vary, its conditions, its children."""

from typing import Any

from tests.cluster.kube import Kube

CHILD_KINDS = "persistentvolumeclaims,configmaps,deployments,services,jobs"


def distillation(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": "nli",
        "region": "westus3",
        "teacher": {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpuType": "H100", "gpus": 8,
                    "tensorParallelSize": 8},
        "dataset": {"train": {"rows": [{"premise": "A man plays a guitar.", "hypothesis": "A man makes music.",
                                        "label": "entailment"}]}},
        "student": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpuType": "H100", "nodes": 2, "gpusPerNode": 8},
        "serving": {"gpuType": "H100", "gpus": 1},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "distillery.dev/v1alpha1", "kind": "Distillation", "metadata": {"name": name},
            "spec": spec}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return None


def children(kube: Kube, namespace: str, parent: str) -> dict[str, dict[str, Any]]:
    items = kube.get(CHILD_KINDS, namespace=namespace, selector=f"distillery.dev/distillation={parent}")
    return {f"{i['kind']}/{i['metadata']['name']}": i for i in (items or {}).get("items", [])}
