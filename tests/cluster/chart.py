"""The Helm chart as the cluster tests use it: helm itself, rendered documents, and the chart's identity in a
cluster."""

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from distillery.devcluster.binaries import Binaries
from tests.cluster.kube import REPO, Kube

CHART = REPO / "charts" / "distillery"
FAST_PODS = {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(Binaries.locate().helm), *args, *([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(*args: str, release: str = "rel", namespace: str = "ops") -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "-n", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


class ChartIdentity:
    """The chart's ServiceAccount and RBAC in a cluster, and a kubeconfig that acts as that account."""

    def __init__(self, kube: Kube, namespace: str, work_dir: Path, watch_own_namespace: bool) -> None:
        self.kube = kube
        self.namespace = namespace
        self.release = f"rbac-{uuid.uuid4().hex[:6]}"
        args = ["--set-json", f"config.podAnnotations={json.dumps(FAST_PODS)}", "--set", "config.resyncSeconds=10"]
        if watch_own_namespace:
            args += ["--set-json", f'watchNamespaces=["{namespace}"]']
        docs = render(*args, release=self.release, namespace=namespace)
        self.rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                                       "RoleBinding")]
        self.config = work_dir / "operator.yaml"
        self.config.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
        self.kubeconfig = work_dir / "chart-identity.kubeconfig"
        self.account = one(docs, "ServiceAccount")["metadata"]["name"]

    def create(self) -> None:
        self.kube.apply(*self.rbac)
        token = self.kube.run("create", "token", self.account, "-n", self.namespace, "--duration=1h").stdout.strip()
        admin = yaml.safe_load(self.kube.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": self.account, "user": {"token": token}}],
            "contexts": [{"name": "chart", "context": {"cluster": cluster["name"], "user": self.account}}],
            "current-context": "chart",
        }))
        self.kubeconfig.chmod(0o600)
        # RBAC reaches the authorizer through an informer: the bindings just applied may not be in force yet.
        # Start nothing as this identity until every rule it was given answers yes.
        pending = self.granted()

        def in_force() -> bool:
            pending[:] = [g for g in pending if not self.can(*g)]
            return not pending

        self.kube.wait_for(in_force, 120, what=f"RBAC in force for {self.account}")

    def granted(self) -> list[tuple[str, ...]]:
        """`kubectl auth can-i` arguments for each verb and resource the chart's roles grant."""
        # The server answers `no` for a type it does not serve (Kueue's Workloads without Kueue installed).
        served = set(self.kube.run("api-resources", "-o", "name").stdout.split())
        checks: list[tuple[str, ...]] = []
        for doc in self.rbac:
            if doc["kind"] not in ("Role", "ClusterRole"):
                continue
            scope = ("-n", doc["metadata"].get("namespace") or self.namespace)
            for rule in doc.get("rules") or []:
                for group in rule.get("apiGroups") or [""]:
                    for resource in rule.get("resources") or []:
                        name, _, sub = resource.partition("/")
                        target = f"{name}.{group}" if group else name
                        extra = (f"--subresource={sub}",) if sub else ()
                        if target in served:
                            checks += [(verb, target, *extra, *scope) for verb in rule.get("verbs") or []]
        return checks

    def delete(self) -> None:
        for doc in self.rbac:
            if doc["kind"].startswith("Cluster"):
                self.kube.run("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found",
                              check=False)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Binaries.locate().kubectl), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, check=False)

    def can(self, *args: str) -> bool:
        result = self.kubectl("auth", "can-i", *args)
        assert result.stdout.strip() in ("yes", "no"), result.stderr
        return result.stdout.strip() == "yes"
