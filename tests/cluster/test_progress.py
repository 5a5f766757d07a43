"""Live progress: a stage pod's identity can patch its progress key, and the operator shows it in status."""

import asyncio
from pathlib import Path

import pytest
import yaml

from distillery.api.reports import LabelingReport
from distillery.api.status import Stage
from distillery.controller.kube import ApiError, KubeClient, load_configuration
from distillery.workloads.progress import LiveProgress
from tests.cluster.distillations import children, distillation
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster


def token_kubeconfig(kube: Kube, namespace: str, service_account: str, path: Path) -> Path:
    token = kube.run("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    config = {**admin, "users": [{"name": "admin", "user": {"token": token}}]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_stage_pod_identity_reports_live_progress_into_status(
        kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    slow = {"pod-complete.stage.kwok.x-k8s.io/delay": "60s"}
    kube.apply(distillation("live", scheduling={"podAnnotations": slow}), namespace=namespace)
    kube.wait_for(lambda: "Job/live-label" in children(kube, namespace, "live"), 60, what="labeling job")
    job = kube.get("job", "live-label", namespace)
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "live-workload"
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    kubeconfig = token_kubeconfig(kube, namespace, "live-workload", tmp_path / "pod.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("DISTILLERY_PROGRESS_CONFIGMAP", env["DISTILLERY_PROGRESS_CONFIGMAP"])
    monkeypatch.setenv("POD_NAMESPACE", namespace)

    counts = LabelingReport(rows_ok=3, rows_rejected=1, rows_total=10, tokens_in=50, tokens_out=70)
    reporter = LiveProgress(Stage.LABELING.value, 0, lambda: counts)
    # The operator made the RoleBinding moments ago; the authorizer may not have it yet.
    kube.wait_for(reporter.publish, 30, what="progress patched as the stage pods' identity")
    assert not reporter.publish(), "an unchanged snapshot is not sent again"
    dist = kube.wait_for(lambda: ((d := kube.get("distillation", "live", namespace)).get("status") or {})
                         .get("progressSummary") == "labeling 4/10" and d, 30, what="progress in status")
    assert dist["status"]["progress"]["rowsLabeled"] == 3
    assert dist["status"]["progress"]["teacherTokensOut"] == 70

    async def patch_other() -> None:
        async with KubeClient(load_configuration(str(kubeconfig))) as client:
            await client.merge_patch("ConfigMap", "live-pipeline", namespace, {"data": {"x": "y"}})

    with pytest.raises(ApiError) as denied:
        asyncio.run(patch_other())
    assert denied.value.status == 403
