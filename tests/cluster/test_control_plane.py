"""The foundation: the local control plane behaves like a real cluster with GPU node pools."""

import pytest

from tests.cluster.kube import Kube

pytestmark = pytest.mark.cluster


def _job(name: str, gpus: int, region: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}, "annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"topology.kubernetes.io/region": region},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "main", "image": "busybox",
                                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
                },
            },
        },
    }


def test_api_server_reports_its_real_version(kube: Kube) -> None:
    import json

    version = json.loads(kube.run("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.36.")
    assert version["minor"] == "36"


def test_node_pools_are_ready_with_gpu_capacity_labels_and_taints(kube: Kube) -> None:
    nodes = kube.get("nodes")["items"]
    gpu = [n for n in nodes if "nvidia.com/gpu.product" in n["metadata"]["labels"]]
    regions = {n["metadata"]["labels"]["topology.kubernetes.io/region"] for n in gpu}
    assert {"westus3", "eastus2"} <= regions
    for n in gpu:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
        ready = next(c for c in n["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
    assert any("nvidia.com/gpu.product" not in n["metadata"]["labels"] for n in nodes), "CPU nodes expected"


def test_gpu_job_lands_on_a_westus3_h100_node_and_succeeds(kube: Kube, namespace: str) -> None:
    kube.apply(_job("train", 8, "westus3"), namespace=namespace)
    kube.wait_for(lambda: (kube.get("job", "train", namespace)["status"].get("succeeded") or 0) >= 1, 60,
                  what="job succeeded")
    pod = kube.get("pods", namespace=namespace, selector="job-name=train")["items"][0]
    node = kube.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["topology.kubernetes.io/region"] == "westus3"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod["status"]["phase"] == "Succeeded"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_unschedulable(kube: Kube, namespace: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "too-big"},
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "16"}}}],
        },
    }
    kube.apply(pod, namespace=namespace)

    def unschedulable() -> bool:
        status = kube.get("pod", "too-big", namespace)["status"]
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                   for c in status.get("conditions", []))

    kube.wait_for(unschedulable, 30, what="Unschedulable")
    status = kube.get("pod", "too-big", namespace)["status"]
    assert status["phase"] == "Pending"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "PodScheduled")
    assert "nvidia.com/gpu" in message


def test_labelled_pod_fails_with_the_injected_exit_code(kube: Kube, namespace: str) -> None:
    job = _job("chaos", 1, "eastus2",
               labels={"pod-container-running-failed.stage.kwok.x-k8s.io": "true"},
               annotations={"pod-container-running-failed.stage.kwok.x-k8s.io/exit-code": "137",
                            "pod-container-running-failed.stage.kwok.x-k8s.io/reason": "OOMKilled"})
    kube.apply(job, namespace=namespace)

    def failed() -> bool:
        conds = kube.get("job", "chaos", namespace)["status"].get("conditions", [])
        return any(c["type"] == "Failed" and c["status"] == "True" for c in conds)

    kube.wait_for(failed, 60, what="job failed")
    pod = kube.get("pods", namespace=namespace, selector="job-name=chaos")["items"][0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 137
    assert terminated["reason"] == "OOMKilled"


def test_job_pods_complete_after_the_annotated_delay(kube: Kube, namespace: str) -> None:
    import time

    job = _job("slow", 1, "westus3", annotations={"pod-complete.stage.kwok.x-k8s.io/delay": "4s"})
    kube.apply(job, namespace=namespace)
    kube.wait_for(lambda: kube.get("job", "slow", namespace)["status"].get("active"), 30, what="active")
    started = time.monotonic()
    kube.wait_for(lambda: kube.get("job", "slow", namespace)["status"].get("succeeded"), 60, what="succeeded")
    assert time.monotonic() - started >= 2.5


def test_deployment_becomes_available(kube: Kube, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
        },
    }
    kube.apply(deployment, namespace=namespace)

    def available() -> bool:
        conds = kube.get("deployment", "web", namespace)["status"].get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conds)

    kube.wait_for(available, 60, what="Available")
    assert kube.get("deployment", "web", namespace)["status"]["availableReplicas"] == 2


def test_claim_binds_through_the_simulated_provisioner(kube: Kube, namespace: str) -> None:
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ws"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    kube.apply(pvc, namespace=namespace)
    kube.wait_for(lambda: kube.get("pvc", "ws", namespace)["status"].get("phase") == "Bound", 30, what="Bound")


def test_crd_with_a_cel_rule_rejects_a_bad_object(kube: Kube, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {
            "group": "example.test", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"}],
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                }},
            }}}],
        },
    }
    kube.apply(crd)
    kube.cluster.wait_established("widgets.example.test")
    good = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "good"},
            "spec": {"min": 1, "max": 2}}
    bad = {**good, "metadata": {"name": "bad"}, "spec": {"min": 3, "max": 2}}
    assert kube.apply(good, namespace=namespace, check=False).returncode == 0
    result = kube.apply(bad, namespace=namespace, check=False)
    assert result.returncode != 0
    assert "min must not exceed max" in result.stderr
