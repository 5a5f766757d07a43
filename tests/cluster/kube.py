"""The test cluster and kubectl against it: JSON in and out, waits on conditions, machines lost and found."""

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from distillery.devcluster.cluster import DevCluster

REPO = Path(__file__).resolve().parents[2]


class Kube:
    """kubectl against the test cluster, with JSON in and out."""

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = self.cluster.kubectl(*args, input=input, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, *manifests: dict[str, Any], namespace: str | None = None, server_side: bool = True,
              check: bool = True) -> subprocess.CompletedProcess:
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--field-manager=tests"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, input=yaml.safe_dump_all(manifests), check=check)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        result = self.run(*args, check=False)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def deny_claims(self, namespace: str) -> None:
        """A ResourceQuota `no-claims` that admits no PersistentVolumeClaim, in force once this returns."""
        quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-claims"},
                 "spec": {"hard": {"persistentvolumeclaims": "0"}}}
        self.apply(quota, namespace=namespace)
        self.wait_for(lambda: (self.get("resourcequota", "no-claims", namespace).get("status") or {}).get("hard"),
                      30, what="quota status computed")

    def wait_for(self, check: Callable[[], Any], timeout: float = 60, interval: float = 0.5,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@contextmanager
def node_deleted(kube: Kube, name: str) -> Iterator[None]:
    """A machine lost for the duration: its Node deleted, then put back as the profile made it, for the
    session's other tests."""
    node = kube.get("node", name)
    kube.run("delete", "node", name)
    try:
        yield
    finally:
        meta = node["metadata"]
        node["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}
        node.pop("status", None)
        kube.apply(node, server_side=False, check=False)


def training_restarted(kube: Kube, namespace: str) -> dict[str, Any]:
    """The operator's TrainingRestarted Event, not the RestartingGroup condition: the condition lasts only until
    the next attempt runs, which a poll may miss on a fast machine."""
    return kube.wait_for(lambda: next((e for e in kube.get("events", namespace=namespace)["items"]
                                       if e.get("reason") == "TrainingRestarted"), None),
                         300, what="the training group restarting")


def running_cluster(suffix: str = "") -> Iterator[DevCluster]:
    """A local control plane for a fixture: up, then down unless DISTILLERY_KEEP_CLUSTER is set."""
    c = DevCluster(os.environ.get("DISTILLERY_TEST_CLUSTER", "test") + suffix)
    c.up()
    yield c
    if not os.environ.get("DISTILLERY_KEEP_CLUSTER"):
        c.down()


def install_crd(kube: Kube) -> None:
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.cluster.wait_established("distillations.distillery.dev")
