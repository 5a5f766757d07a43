"""Pieces every child manifest shares: names, labels, ownership, placement on GPU pools."""

from dataclasses import dataclass
from typing import Any

from distillery.api.config import OperatorConfig
from distillery.api.crd import GROUP, KIND, VERSION
from distillery.api.modelref import PVC_MOUNT_ROOT, pvc_claims
from distillery.api.pipeline import CONFIG_FILE, CONFIG_MOUNT_DIR, WORKSPACE_DIR
from distillery.api.spec import DistillationSpec, SecretKeyRef

PARENT_LABEL = "distillery.dev/distillation"
STAGE_LABEL = "distillery.dev/stage"
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
    label = property(lambda self: f"{self.parent}-label")
    train = property(lambda self: f"{self.parent}-train")
    eval = property(lambda self: f"{self.parent}-eval")
    student = property(lambda self: f"{self.parent}-student")
    progress = property(lambda self: f"{self.parent}-progress")
    workload = property(lambda self: f"{self.parent}-workload")


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


def gpu_placement(spec: DistillationSpec, config: OperatorConfig, gpu_type: str | None) -> dict[str, Any]:
    """Pod-spec fields that pin a pod to the Distillation's region, and to a GPU type when it needs GPUs."""
    requirements = [{"key": config.region_label, "operator": "In", "values": [spec.region]}]
    tolerations = [t.to_wire() for t in spec.scheduling.tolerations]
    if gpu_type:
        requirements.append(
            {"key": config.gpu_product_label, "operator": "In", "values": config.gpu_products(gpu_type)}
        )
        tolerations.append({"key": config.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"})
    placement: dict[str, Any] = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": requirements}]}}},
        "tolerations": tolerations,
    }
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
    return [spec.dataset.train.uri, spec.dataset.validation.uri if spec.dataset.validation else None]


def config_path() -> str:
    return f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}"


def workload_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def hub_access(spec: DistillationSpec, token_ref: SecretKeyRef | None = None, cache: bool = True,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) for a pod that reads the model hub: the token, and the cache volume at HF_HOME.

    `token_ref` wins over spec.hubTokenSecretRef (the teacher's own token); `cache` is False for pods
    that read only datasets and run on CPU nodes (labeling), where a shared RWO claim would not attach.
    """
    env: list[dict[str, Any]] = []
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
                      volumes: list[dict[str, Any]], startup_seconds: int) -> dict[str, Any]:
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
                "spec": {**placement, "containers": [container], "volumes": volumes, "enableServiceLinks": False},
            },
        },
    }
