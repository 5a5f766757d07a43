"""One credential stack, loaded by the `kubernetes` package, for the CLI, the operator and the stage pods'
progress reports: kubeconfigs as the managed clouds write them (inline data, exec plugins), several files in
$KUBECONFIG, a context other than the current one, and a broken file."""

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.api.reports import LabelingReport, progress_key
from distillery.api.status import Stage
from distillery.devcluster.cluster import DevCluster
from distillery.workloads.progress import LiveProgress
from tests.cluster.distillations import distillation
from tests.cluster.kube import REPO, Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def server_of(cluster: DevCluster) -> str:
    return str(yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


def inline_data(cluster: DevCluster, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """As `az aks get-credentials --admin` writes it: CA, client certificate and key all inline."""
    cert, key = cluster.pki.client_certificate("distillery-test-admin", ["system:masters"])
    ca = b64(cluster.pki.ca_crt.read_bytes())
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "aks",
              "clusters": [{"name": "aks",
                            "cluster": {"server": server_of(cluster), "certificate-authority-data": ca}}],
              "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
              "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "admin"}}]}
    path = tmp / "inline.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return {"KUBECONFIG": str(path)}, []


def exec_plugin(cluster: DevCluster, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """As EKS and GKE write it: an exec credential plugin mints the token (here a script that prints one)."""
    plugin = tmp / "token-plugin"
    plugin.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({{'apiVersion': "
                      f"'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', "
                      f"'status': {{'token': {cluster.pki.admin_token!r}}}}}))\n")
    plugin.chmod(0o755)
    ca = b64(cluster.pki.ca_crt.read_bytes())
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "eks",
              "clusters": [{"name": "eks",
                            "cluster": {"server": server_of(cluster), "certificate-authority-data": ca}}],
              "users": [{"name": "iam", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                          "command": str(plugin), "interactiveMode": "Never"}}}],
              "contexts": [{"name": "eks", "context": {"cluster": "eks", "user": "iam"}}]}
    path = tmp / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return {"KUBECONFIG": str(path)}, []


def split_files(cluster: DevCluster, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The cluster and context in one file, the user in another: $KUBECONFIG lists both."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    first, second = tmp / "clusters.kubeconfig", tmp / "users.kubeconfig"
    first.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                                     "contexts": admin["contexts"], "current-context": admin["current-context"]}))
    second.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "users": admin["users"]}))
    return {"KUBECONFIG": os.pathsep.join([str(first), str(second)])}, []


def other_context(cluster: DevCluster, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The current context points at a cluster that does not answer; `--context` picks the right one."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    good = admin["contexts"][0]["name"]
    admin["clusters"].append({"name": "gone", "cluster": {"server": "https://127.0.0.1:1",
                                                          "insecure-skip-tls-verify": True}})
    admin["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "admin"}})
    admin["current-context"] = "gone"
    path = tmp / "contexts.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    return {"KUBECONFIG": str(path)}, ["--context", good]


KUBECONFIGS: dict[str, Callable[[DevCluster, Path], tuple[dict[str, str], list[str]]]] = {
    "inline-data": inline_data, "exec-plugin": exec_plugin, "split-files": split_files,
    "other-context": other_context,
}


def distillery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = os.environ | env | {"PYTHONPATH": str(REPO / "operator")}
    return subprocess.run([sys.executable, "-m", "distillery.cli", *args], capture_output=True, text=True,
                          env=full, timeout=120, check=False)


@pytest.mark.parametrize("shape", KUBECONFIGS)
def test_the_operator_and_the_cli_use_the_kubeconfig_as_kubectl_would(
        shape: str, cluster: DevCluster, kube: Kube, namespace: str, crd: None, tmp_path: Path) -> None:
    env, flags = KUBECONFIGS[shape](cluster, tmp_path)
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}}))
    op = OperatorProcess(Path(env["KUBECONFIG"].split(os.pathsep)[0]), tmp_path, config, env=env, args=flags)
    op.start()
    try:
        kube.apply(distillation("creds"), namespace=namespace)
        # Status written means kopf's watch (the login handler) and the writes (the client) both got in.
        dist: dict[str, Any] = kube.wait_for(
            lambda: (d := kube.get("distillation", "creds", namespace)).get("status", {}).get("observedGeneration")
            and d, 60, what="status written by the operator")
        assert dist["status"]["phase"]
    finally:
        op.stop()
    shown = distillery("status", "creds", "-n", namespace, *flags, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "creds" in shown.stdout and "Stages:" in shown.stdout


@pytest.mark.parametrize("shape", ["inline-data", "exec-plugin", "split-files"])
def test_the_progress_reporter_uses_the_same_loader(
        shape: str, cluster: DevCluster, kube: Kube, namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env, _ = KUBECONFIGS[shape](cluster, tmp_path)
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "creds-progress"}, "data": {}},
               namespace=namespace)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DISTILLERY_PROGRESS_CONFIGMAP", "creds-progress")
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    assert LiveProgress(Stage.LABELING.value, 3, lambda: LabelingReport(rows_ok=7)).publish()
    data = kube.get("configmap", "creds-progress", namespace)["data"]
    assert json.loads(data[progress_key(Stage.LABELING.value, 3)]) == LabelingReport(rows_ok=7).dump()


@pytest.mark.parametrize("content", ["clusters: [oops", "apiVersion: v1\nkind: Config\ncurrent-context: none\n"])
@pytest.mark.parametrize("command", [["status", "x"], ["operator", "--metrics-port", "0"]])
def test_a_broken_kubeconfig_is_one_clear_line(command: list[str], content: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.kubeconfig"
    path.write_text(content)
    result = distillery(*command, env={"KUBECONFIG": str(path)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"distillery {command[0]}: cannot load Kubernetes credentials from {path}"), lines
