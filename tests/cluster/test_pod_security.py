"""Stage pods under the local apiserver's own PodSecurity admission, in a namespace enforcing "restricted"."""

from typing import Any

import pytest

from tests.cluster.distillations import condition, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

NONROOT = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532}
TEACHER = {"model": "meta-llama/Llama-3.3-70B-Instruct", "gpuType": "H100", "gpus": 8, "tensorParallelSize": 8}


@pytest.fixture
def restricted(kube: Kube, namespace: str) -> str:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
             "pod-security.kubernetes.io/enforce-version=latest")
    return namespace


def failed_creates(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return [e for e in kube.get("events", namespace=namespace)["items"] if e["reason"] == "FailedCreate"]


def test_every_stage_pod_is_admitted_with_the_documented_server_setting(
        kube: Kube, restricted: str, operator: OperatorProcess) -> None:
    kube.apply(distillation("secure", teacher={**TEACHER, "securityContext": NONROOT},
                            serving={"gpuType": "H100", "gpus": 1, "securityContext": NONROOT}), namespace=restricted)
    stages: set[str] = set()

    def succeeded() -> bool:
        assert not (refused := failed_creates(kube, restricted)), refused[0]["message"]
        stages.update(p["metadata"]["labels"].get("distillery.dev/stage", "")
                      for p in kube.get("pods", namespace=restricted)["items"])
        return (condition(kube.get("distillation", "secure", restricted), "Succeeded") or {}).get("status") == "True"

    kube.wait_for(succeeded, 120, interval=0.3, what="Succeeded in a restricted namespace")
    assert {"teacher", "labeling", "training", "evaluation", "serving"} <= stages
    assert not failed_creates(kube, restricted)


def test_the_root_vllm_image_default_is_refused_while_the_jobs_run(
        kube: Kube, restricted: str, operator: OperatorProcess) -> None:
    # An endpoint teacher: labeling, training and evaluation run with the defaults, then the student server.
    kube.apply(distillation("plain", teacher={"endpoint": {"url": "http://teacher.example/v1", "model": "t"}},
                            serving={"gpuType": "H100", "gpus": 1}), namespace=restricted)

    def server_refused() -> list[dict[str, Any]]:
        return [e for e in failed_creates(kube, restricted) if e["involvedObject"]["kind"] == "ReplicaSet"]

    (event, *_) = kube.wait_for(server_refused, 120, interval=0.5, what="the student ReplicaSet's FailedCreate")
    assert 'violates PodSecurity "restricted:latest"' in event["message"]
    assert "runAsNonRoot" in event["message"]
    assert event["involvedObject"]["name"].startswith("plain-student-")
    assert not [e for e in failed_creates(kube, restricted) if e["involvedObject"]["kind"] == "Job"]
    stages = {p["metadata"]["labels"].get("distillery.dev/stage")
              for p in kube.get("pods", namespace=restricted)["items"]}
    assert {"labeling", "training", "evaluation"} <= stages
