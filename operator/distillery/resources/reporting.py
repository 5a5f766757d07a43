"""Live progress: a ConfigMap the stage pods patch, and the narrow identity that lets them.

Workloads never write the Distillation; they patch one key per pod in
`<name>-progress`, which the operator watches and folds into status.progress.
"""

from typing import Any

from distillery.api.pipeline import POD_NAMESPACE_ENV, PROGRESS_CONFIGMAP_ENV
from distillery.resources.common import Names, Owner, metadata

STAGE = "progress"


def progress_configmap(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(owner, Names(owner.name).progress, STAGE),
            "data": {}}


def workload_service_account(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(owner, Names(owner.name).workload, STAGE)}


def workload_role(owner: Owner) -> dict[str, Any]:
    names = Names(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner, names.workload, STAGE),
        # Only this Distillation's progress ConfigMap, and only to read and patch it.
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.progress],
                   "verbs": ["get", "patch"]}],
    }


def workload_role_binding(owner: Owner) -> dict[str, Any]:
    names = Names(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(owner, names.workload, STAGE),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.workload},
        "subjects": [{"kind": "ServiceAccount", "name": names.workload, "namespace": owner.namespace}],
    }


def workload_env(owner: Owner) -> list[dict[str, Any]]:
    return [
        {"name": PROGRESS_CONFIGMAP_ENV, "value": Names(owner.name).progress},
        {"name": POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
