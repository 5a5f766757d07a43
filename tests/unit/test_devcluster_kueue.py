"""The local control plane's Kueue manifests: webhooks by URL, conversion where Kueue converts, flavors."""

import base64
from pathlib import Path

import yaml

from distillery.devcluster import kueue
from distillery.devcluster.nodepools import DEFAULT_NODEPOOLS, POOL_LABEL, NodePools

MANIFESTS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mjob.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}}
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
- name: mclusterqueue.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-clusterqueue}}
"""


def test_webhooks_point_at_the_manager_by_url_and_only_where_it_serves() -> None:
    [config] = kueue.webhook_configurations(MANIFESTS, "https://127.0.0.1:9443", b"CA")
    assert config["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    hooks = {h["name"]: h["clientConfig"] for h in config["webhooks"]}
    assert set(hooks) == {"mjob.kb.io", "mclusterqueue.kb.io"}, "the pod webhook would refuse every pod"
    assert hooks["mjob.kb.io"] == {"url": "https://127.0.0.1:9443/mutate-batch-v1-job",
                                   "caBundle": base64.b64encode(b"CA").decode()}


def test_conversion_only_for_the_crds_kueue_converts(tmp_path: Path) -> None:
    for plural in ("workloads", "resourceflavors"):
        crd = {"metadata": {"name": f"{plural}.kueue.x-k8s.io"},
               "spec": {"versions": [{"name": "v1beta1", "served": True}, {"name": "v1beta2", "served": True}]}}
        (tmp_path / f"{plural}.yaml").write_text(yaml.safe_dump(crd))
    crds = {c["metadata"]["name"]: c["spec"] for c in kueue.crds(tmp_path, "https://127.0.0.1:1", b"CA")}
    assert crds["workloads.kueue.x-k8s.io"]["conversion"]["webhook"]["clientConfig"]["url"] == \
        "https://127.0.0.1:1/convert"
    assert "conversion" not in crds["resourceflavors.kueue.x-k8s.io"]


def test_the_cluster_queue_lends_16_h100s_and_pins_cpu_pods_to_cpu_nodes() -> None:
    objects = {o["metadata"]["name"]: o for o in kueue.queue_objects(NodePools.load(DEFAULT_NODEPOOLS))}
    assert objects[kueue.H100_FLAVOR]["spec"]["nodeLabels"][POOL_LABEL] == "westus3-h100"
    assert objects[kueue.CPU_FLAVOR]["spec"]["nodeLabels"][POOL_LABEL] == "westus3-cpu"
    [group] = objects[kueue.CLUSTER_QUEUE]["spec"]["resourceGroups"]
    gpus = {f["name"]: next(r["nominalQuota"] for r in f["resources"] if r["name"] == "nvidia.com/gpu")
            for f in group["flavors"]}
    # Kueue tries flavors in order: a CPU-only pod set takes the first, which has no GPUs for a GPU pod set.
    assert list(gpus.items()) == [(kueue.CPU_FLAVOR, "0"), (kueue.H100_FLAVOR, "16")]
