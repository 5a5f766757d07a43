"""A student gated on the hub: the pods read it through HF_ENDPOINT (the operator's hubEndpoint) from a local hub
that refuses it without the token (devcluster/hub_server.py); training runs for real through the local kubelet."""

import copy
from pathlib import Path

import pytest

from distillery.devcluster.demo import GATED_STUDENT, local_sample
from tests.cluster.distillations import condition
from tests.cluster.kube import Kube
from tests.cluster.pipeline import Pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.workload]

TOKEN = "hf_distillery_test_token"


def test_a_gated_student_is_read_only_with_the_hub_token(kube: Kube, crd: None, namespace: str,
                                                          tmp_path: Path) -> None:
    manifest = local_sample()
    manifest["metadata"]["name"] = "gated"
    spec = manifest["spec"]
    spec["evaluation"] = {"enabled": False}
    spec["student"].update({"model": GATED_STUDENT, "epochs": 1})
    pipeline = Pipeline(kube, namespace, tmp_path, manifest, hub_token=TOKEN)
    try:
        pipeline.start()
        hub = pipeline.workloads.hub
        assert hub is not None
        kube.run("create", "secret", "generic", "hub-token", "-n", namespace, f"--from-literal=token={TOKEN}")

        # Without spec.hubTokenSecretRef: the hub answers 401, training fails at once and says why.
        pipeline.apply()
        failed = pipeline.finished()
        assert failed["status"]["phase"] == "Failed", failed["status"]
        trained = condition(failed, "Trained")
        assert trained is not None and trained["reason"] == "PodFailurePolicy", trained
        assert "is gated on the hub" in trained["message"] and "401" in trained["message"], trained
        assert "hubTokenSecretRef" in trained["message"] and hub.refused > 0

        # With it: the pods get HF_TOKEN, the student downloads and the run succeeds.
        with_token = copy.deepcopy(manifest)
        with_token["metadata"]["name"] = "gated-with-token"
        with_token["spec"]["hubTokenSecretRef"] = {"name": "hub-token", "key": "token"}
        pipeline.name, pipeline.manifest = "gated-with-token", with_token
        kube.apply(with_token, namespace=namespace)
        dist = pipeline.finished()
    finally:
        pipeline.stop()
    assert dist["status"]["phase"] == "Succeeded", dist["status"]
    assert f"{GATED_STUDENT}/model.safetensors" in hub.served
