"""Kueue on the local control plane: the manager as a local process, its webhooks reached by URL.

In a real cluster Kueue's webhooks sit behind a Service and Kueue rotates its own serving certificate
into a Secret. Here nothing can route a Service to a process on loopback, so the webhook configurations
(and the CRDs' conversion webhooks) name `https://127.0.0.1:<port>/<path>` directly, the serving
certificate comes from the cluster's CA, and Kueue's cert rotation is off.
"""

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

from distillery.devcluster.nodepools import GPU_RESOURCE, POOL_LABEL, NodePools

NAMESPACE = "kueue-system"
REGION = "westus3"
GPU_QUOTA = 16
"""H100s the ClusterQueue lends at once: two 2-node x 8-GPU trainings cannot run side by side."""
H100_FLAVOR, CPU_FLAVOR = f"h100-{REGION}", f"cpu-{REGION}"
CLUSTER_QUEUE = f"gpu-{REGION}"
LOCAL_QUEUE = "gpus"
# Far above what the simulated pools hold: only GPUs are meant to be scarce.
UNLIMITED_CPU, UNLIMITED_MEMORY = "100000", "1000Ti"
# The webhooks of the integrations we enable (batch/job) and of Kueue's own kinds. The others (pods,
# Deployments, other frameworks' CRDs) would send every matching request to paths the manager does not
# serve without their integration, and their failurePolicy Fail would then refuse those requests.
WEBHOOK_PATH_PARTS = ("-batch-v1-job", "-kueue-x-k8s-io-")
CONVERSION_PATH = "/convert"
# config/components/crd/kustomization.yaml enables the conversion webhook for these alone (ResourceFlavor's
# patch is commented out: the manager cannot convert it).
CONVERTED_CRDS = {f"{plural}.kueue.x-k8s.io" for plural in
                  ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")}


METRICS_CERT_DIR = "kueue/metrics/certs"
"""With its cert rotation off, Kueue loads a metrics certificate from /etc/kueue/metrics/certs at start
(cmd/kueue/main.go; no flag moves it) and exits without one, even with metrics off."""


def with_etc_overlay(etc: Path) -> list[str]:
    """A command prefix that runs the command with `etc` laid over /etc in a private mount namespace: the
    metrics certificate appears where Kueue looks, and this machine's /etc stays untouched (shared by
    other clusters and users). Needs unprivileged user namespaces, or root."""
    script = 'mount -t overlay overlay -o "lowerdir=$1:/etc" /etc && shift && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(etc)]


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        # Its rotator would write a Secret and patch a Service-based webhook config we do not have.
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def webhook_configurations(manifests: str, base_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """Kueue's Mutating/ValidatingWebhookConfigurations (config/components/webhook/manifests.yaml), kept
    to the webhooks the manager serves here and pointed at it by URL."""
    bundle = base64.b64encode(ca_pem).decode()
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
        kept = []
        for hook in doc.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            if any(part in path for part in WEBHOOK_PATH_PARTS):
                hook["clientConfig"] = {"url": _url(base_url, path), "caBundle": bundle}
                kept.append(hook)
        doc["webhooks"] = kept
        out.append(doc)
    return out


def crds(crd_dir: Path, base_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """The CRDs of config/components/crd/bases, converting through the manager as the module's kustomize
    patches (webhook_in_*.yaml) configure them."""
    bundle = base64.b64encode(ca_pem).decode()
    out = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["metadata"]["name"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": _url(base_url, CONVERSION_PATH), "caBundle": bundle},
                "conversionReviewVersions": ["v1"]}}
        out.append(crd)
    return out


def _pool(pools: NodePools, gpus: bool) -> str:
    for pool in pools.pools:
        if pool.region == REGION and bool(pool.gpus) == gpus:
            return pool.name
    kind = "GPU" if gpus else "CPU"
    raise ValueError(f"Kueue's ClusterQueue needs a {kind} node pool in {REGION}; the node-pool file has none")


def queue_objects(pools: NodePools) -> list[dict[str, Any]]:
    """Two flavors in one resource group, the CPU one first: a CPU-only pod set (labeling) fits it and is
    pinned to the CPU pool; a GPU pod set does not (no GPU quota there) and gets the H100 flavor, whose
    nodeLabels pin it to the westus3 H100 pool. Only the H100 flavor's 16 GPUs are scarce."""
    flavors = [(CPU_FLAVOR, _pool(pools, gpus=False), "0"), (H100_FLAVOR, _pool(pools, gpus=True), str(GPU_QUOTA))]
    objects: list[dict[str, Any]] = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name},
         "spec": {"nodeLabels": {"topology.kubernetes.io/region": REGION, POOL_LABEL: pool}}}
        for name, pool, _ in flavors]
    objects.append({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                "flavors": [{"name": name, "resources": [
                    {"name": "cpu", "nominalQuota": UNLIMITED_CPU},
                    {"name": "memory", "nominalQuota": UNLIMITED_MEMORY},
                    {"name": GPU_RESOURCE, "nominalQuota": gpus}]} for name, _, gpus in flavors],
            }],
        },
    })
    return objects


def local_queue(namespace: str, name: str = LOCAL_QUEUE) -> dict[str, Any]:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": CLUSTER_QUEUE}}
