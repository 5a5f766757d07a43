"""The workspace PVC, created before any stage: the volume every stage reads and writes."""

from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.spec import AccessMode, DistillationSpec
from distillery.resources.common import Names, Owner, metadata
from distillery.resources.pipeline_json import label_shards


def workspace_pods(spec: DistillationSpec) -> int:
    """The most pods that mount the workspace at once. Stages run one after another, but within a stage the
    labeling shards, the training nodes and the serving replicas may each land on a different node."""
    serving = spec.serving.replicas if spec.serving.enabled else 0
    evaluator = 1 if spec.evaluation.enabled else 0
    return max(1, label_shards(spec), spec.student.nodes, serving, evaluator)


def workspace_access_modes(spec: DistillationSpec) -> list[str]:
    """ReadWriteOnce lets pods on one node share a volume; pods on several nodes need ReadWriteMany, or the
    second one waits forever on a Multi-Attach error."""
    if spec.storage.access_modes:
        return [m.value for m in spec.storage.access_modes]
    return [AccessMode.READ_WRITE_MANY.value if workspace_pods(spec) > 1 else AccessMode.READ_WRITE_ONCE.value]


def workspace_pvc(owner: Owner, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    access_modes = workspace_access_modes(spec)
    pvc_spec: dict[str, Any] = {
        "accessModes": access_modes,
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    shared = AccessMode.READ_WRITE_MANY.value in access_modes
    storage_class = (spec.storage.storage_class_name or (shared and config.shared_storage_class_name)
                     or config.storage_class_name)
    if storage_class:
        pvc_spec["storageClassName"] = storage_class
    meta = metadata(owner, Names(owner.name).workspace, "workspace")
    # The workspace holds the user's labels and model: keep it if the operator's
    # own cleanup runs, but let the owner reference delete it with the Distillation.
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": pvc_spec}
