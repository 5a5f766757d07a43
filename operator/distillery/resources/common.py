"""Pieces every child manifest shares: names, labels, ownership, placement on GPU pools."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.crd import GROUP, KIND, VERSION
from distillery.api.modelref import PVC_MOUNT_ROOT, pvc_claims
from distillery.api.pipeline import CONFIG_FILE, CONFIG_MOUNT_DIR, WORKSPACE_DIR
from distillery.api.spec import DistillationSpec, SecretKeyRef, ServerSecurityContext

PARENT_LABEL = "distillery.dev/distillation"
APPLIED_HASH_ANNOTATION = "distillery.dev/applied-hash"
"""On children the operator keeps up to date: the hash of the manifest it last applied."""
STAGE_LABEL = "distillery.dev/stage"
TEACHER_LABEL = "distillery.dev/teacher"
"""On the Deployment, Service and pods of one of several teachers: its name in spec.teachers."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RENDEZVOUS_PORT = 29500
HUB_CACHE_DIR = "/var/cache/huggingface"
"""Mount path of spec.modelCache; HF_HOME points here, so hub downloads (and vLLM's, which uses the
same library) land on the cache volume instead of the container's writable layer."""
HUB_CACHE_VOLUME = "hub-cache"
SERVER_PLACEMENT_ALLOWANCE_S = 1200
"""Added to a server's startup budget for its progress deadline: an autoscaler adding a GPU node and the
multi-GB vLLM image pull both come before the container starts."""


@dataclass(frozen=True)
class Owner:
    """The Distillation a child belongs to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


class Names:
    """Deterministic child names, so a restarted operator finds what it made before."""

    def __init__(self, parent: str) -> None:
        self.parent = parent

    workspace = property(lambda self: f"{self.parent}-workspace")
    pipeline = property(lambda self: f"{self.parent}-pipeline")
    teacher = property(lambda self: f"{self.parent}-teacher")
    generate = property(lambda self: f"{self.parent}-gen")
    label = property(lambda self: f"{self.parent}-label")
    train = property(lambda self: f"{self.parent}-train")
    eval = property(lambda self: f"{self.parent}-eval")
    student = property(lambda self: f"{self.parent}-student")
    progress = property(lambda self: f"{self.parent}-progress")
    workload = property(lambda self: f"{self.parent}-workload")

    def teacher_member(self, index: int) -> str:
        """The Deployment and Service of spec.teachers[index]: by index, not by the teacher's name, so every
        name fits the 63 characters of a Service name whatever the parent's (at most 53) and the teacher's."""
        return f"{self.parent}-teacher-{index}"


def labels(owner: Owner, stage: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "distillery",
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/managed-by": "distillery-operator",
        PARENT_LABEL: owner.name,
        STAGE_LABEL: stage,
    }


def metadata(owner: Owner, name: str, stage: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, stage),
        "ownerReferences": [owner.reference()],
    }


def node_selector_terms(config: OperatorConfig, region: str, gpu_type: str | None) -> list[dict[str, Any]]:
    """Required node affinity terms: one per way the catalogue recognises the GPU type (the scheduler ORs
    terms), each also pinned to the region; a CPU pod gets the region alone."""
    region_requirement = {"key": config.region_label, "operator": "In", "values": [region]}
    if not gpu_type:
        return [{"matchExpressions": [region_requirement]}]
    return [{"matchExpressions": [region_requirement, {"key": label, "operator": "In", "values": list(values)}]}
            for label, values in config.gpu_node_labels(gpu_type).items() if values]


def _requirement_holds(requirement: dict[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = requirement["key"], requirement["operator"], requirement.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    raise ValueError(f"unknown node selector operator {operator!r}")


def node_matches_terms(terms: list[dict[str, Any]], labels: Mapping[str, str]) -> bool:
    """The scheduler's reading of nodeSelectorTerms: any term whose expressions all hold."""
    return any(all(_requirement_holds(r, labels) for r in term.get("matchExpressions") or []) for term in terms)


def gpu_node_fits(config: OperatorConfig, labels: Mapping[str, str], allocatable_gpus: int, region: str,
                  gpu_type: str | None, gpus_per_pod: int, node_selector: Mapping[str, str] | None = None) -> bool:
    """Could a stage pod ever run on this node? The same terms `gpu_placement` renders, plus the
    Distillation's nodeSelector, so the capacity check counts exactly the nodes the scheduler may choose."""
    terms = node_selector_terms(config, region, gpu_type if gpus_per_pod else None)
    if any(labels.get(k) != v for k, v in (node_selector or {}).items()):
        return False
    return node_matches_terms(terms, labels) and allocatable_gpus >= gpus_per_pod


def _away_from_gpus(config: OperatorConfig) -> dict[str, Any]:
    """Preferred affinity for CPU pods: nodes the catalogue does not recognise as GPU nodes. Clouds that do
    not taint GPU nodes (AKS) would otherwise let a labeler keep an expensive node busy and awake."""
    gpu_values: dict[str, set[str]] = {}
    for labels in config.gpu_catalogue.values():
        for label, values in labels.items():
            gpu_values.setdefault(label, set()).update(values)
    expressions = [{"key": label, "operator": "NotIn", "values": sorted(values)}
                   for label, values in sorted(gpu_values.items()) if values]
    return {"weight": 100, "preference": {"matchExpressions": expressions}}


def gpu_placement(spec: DistillationSpec, config: OperatorConfig, gpu_type: str | None) -> dict[str, Any]:
    """Pod-spec fields that pin a pod to the Distillation's region, and to a GPU type when it needs GPUs."""
    tolerations = [t.to_wire() for t in spec.scheduling.tolerations]
    node_affinity: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": node_selector_terms(config, spec.region, gpu_type)}}
    if gpu_type:
        tolerations.append({"key": config.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"})
    else:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [_away_from_gpus(config)]
    placement: dict[str, Any] = {"affinity": {"nodeAffinity": node_affinity}, "tolerations": tolerations}
    if spec.scheduling.node_selector:
        placement["nodeSelector"] = dict(spec.scheduling.node_selector)
    if spec.scheduling.priority_class_name:
        placement["priorityClassName"] = spec.scheduling.priority_class_name
    return placement


def gpu_resources(config: OperatorConfig, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if gpus:
        requests[config.gpu_resource] = str(gpus)
        limits[config.gpu_resource] = str(gpus)
    return {"requests": requests, "limits": limits}


def pod_metadata(owner: Owner, stage: str, spec: DistillationSpec, config: OperatorConfig) -> dict[str, Any]:
    pod_labels = {**spec.scheduling.pod_labels, **labels(owner, stage)}
    annotations = {**config.pod_annotations, **spec.scheduling.pod_annotations}
    meta: dict[str, Any] = {"labels": pod_labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def config_volume(names: Names) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "pipeline", "configMap": {"name": names.pipeline}}
    mount = {"name": "pipeline", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}
    return volume, mount


def workspace_volume(names: Names) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "workspace", "persistentVolumeClaim": {"claimName": names.workspace}}
    mount = {"name": "workspace", "mountPath": WORKSPACE_DIR}
    return volume, mount


def pvc_source_volumes(*uris: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read-only mounts at PVC_MOUNT_ROOT/<claim> for the pvc:// sources a pod reads (dataset or model)."""
    claims = pvc_claims(*uris)
    volumes = [{"name": f"src-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}}
               for i, c in enumerate(claims)]
    mounts = [{"name": f"src-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{c}", "readOnly": True}
              for i, c in enumerate(claims)]
    return volumes, mounts


def dataset_uris(spec: DistillationSpec) -> list[str | None]:
    d = spec.dataset
    return [d.train.uri if d.train else None, d.validation.uri if d.validation else None,
            d.generate.seeds.uri if d.generate else None]


def config_path() -> str:
    return f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}"


def workload_security_context() -> dict[str, Any]:
    """Container securityContext of every stage container, vLLM included: none of them needs a capability."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def server_pod_security_context(config: OperatorConfig, override: ServerSecurityContext | None) -> dict[str, Any]:
    """The operator's serving default with the Distillation's own fields on top."""
    return {**config.serving_pod_security_context, **(override.to_wire() if override else {})}


def hub_access(spec: DistillationSpec, token_ref: SecretKeyRef | None = None, cache: bool = True,
               endpoint: str | None = None,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) for a pod that reads the model hub: the token, the hub's address (the operator's
    hub_endpoint) and the cache volume at HF_HOME.

    `token_ref` wins over spec.hubTokenSecretRef (the teacher's own token); `cache` is False for pods
    that read only datasets and run on CPU nodes (labeling), where a shared RWO claim would not attach.
    """
    env: list[dict[str, Any]] = [{"name": "HF_ENDPOINT", "value": endpoint}] if endpoint else []
    ref = token_ref or spec.hub_token_secret_ref
    if ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref.to_wire()}})
    cache_spec = spec.model_cache
    if not cache or cache_spec is None:
        return env, [], []
    env.append({"name": "HF_HOME", "value": HUB_CACHE_DIR})
    volume: dict[str, Any] = {"name": HUB_CACHE_VOLUME}
    if cache_spec.claim_name is not None:
        volume["persistentVolumeClaim"] = {"claimName": cache_spec.claim_name}
    else:
        assert cache_spec.ephemeral is not None
        volume["ephemeral"] = {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": cache_spec.ephemeral.storage_class_name,
            "resources": {"requests": {"storage": cache_spec.ephemeral.size}},
        }}}
    return env, [volume], [{"name": HUB_CACHE_VOLUME, "mountPath": HUB_CACHE_DIR}]


def server_probes(startup_seconds: int) -> dict[str, Any]:
    """Probes for a vLLM server that the labeler keeps saturated.

    A busy server answers /health late, not never: generous timeouts, and liveness restarts only after
    minutes of silence, since a restart costs a full model reload. Startup allows `startup_seconds`.
    """
    def probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period,
                "timeoutSeconds": timeout, "failureThreshold": failures}

    return {
        "startupProbe": probe(10, 10, -(-startup_seconds // 10)),
        "readinessProbe": probe(10, 10, 6),
        "livenessProbe": probe(30, 20, 10),
    }


def http_service(owner: Owner, name: str, stage: str, port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of a server Deployment made by `server_deployment`."""
    meta = metadata(owner, name, stage)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": dict(meta["labels"]), "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def server_deployment(owner: Owner, name: str, stage: str, replicas: int, pod_meta: dict[str, Any],
                      placement: dict[str, Any], container: dict[str, Any],
                      volumes: list[dict[str, Any]], security_context: dict[str, Any], startup_seconds: int,
                      ) -> dict[str, Any]:
    """A Deployment whose selector is the stage's own labels (never the user's extra pod labels).

    Its progress deadline covers placement plus the startup budget, so a normal cold start of a large
    model is not reported as ProgressDeadlineExceeded.
    """
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, name, stage),
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": startup_seconds + SERVER_PLACEMENT_ALLOWANCE_S,
            "selector": {"matchLabels": labels(owner, stage)},
            "template": {
                "metadata": pod_meta,
                "spec": {**placement, "securityContext": security_context,
                         "containers": [{**container, "securityContext": workload_security_context()}],
                         "volumes": volumes, "enableServiceLinks": False},
            },
        },
    }


def digest(value: Any) -> str:
    """A short, stable digest of a JSON value (key order does not matter): the manifest last applied to a
    child, each part of the labels' fingerprint."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
