"""Session-scoped real control plane; each test gets its own namespace."""

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.devcluster.cluster import DevCluster
from distillery.workloads.environment import free_port

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster]:
    yield from running_cluster()


@pytest.fixture(scope="session")
def kube(cluster: DevCluster) -> Kube:
    return Kube(cluster)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.run("create", "namespace", name)
    kube.wait_for(lambda: kube.get("serviceaccount", "default", name), 30, what="default ServiceAccount")
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def install_crd(kube: Kube) -> None:
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.cluster.wait_established("distillations.distillery.dev")


@pytest.fixture(scope="session")
def crd(kube: Kube) -> None:
    install_crd(kube)



class OperatorProcess:
    """`distillery operator` as a real subprocess, restartable and killable like a pod."""

    def __init__(self, kubeconfig: Path, log_dir: Path, config: Path | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.config = config
        self.extra_env = env or {}
        self.extra_args = args or []
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        self.starts += 1
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"} | self.extra_env
        env["PYTHONPATH"] = str(REPO / "operator") + os.pathsep + env.get("PYTHONPATH", "")
        if self.config:
            env["DISTILLERY_CONFIG"] = str(self.config)
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distillery.cli", "operator", "--metrics-port", str(self.metrics_port),
             "--liveness", f"http://127.0.0.1:{free_port()}/healthz", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("operator metrics endpoint did not come up")

    def start_if_stopped(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def logs(self) -> str:
        return "\n".join(self.log_of_start(n) for n in range(1, self.starts + 1))

    def log_of_start(self, number: int) -> str:
        return (self.log_dir / f"operator-{number}.log").read_text(errors="replace")


@pytest.fixture
def operator(cluster: DevCluster, crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    config = tmp_path / "operator.yaml"
    # Short simulated stage times keep the pipeline tests quick.
    config.write_text(yaml.safe_dump({"pod_annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"},
                                      "resync_seconds": 10}))
    op = OperatorProcess(cluster.kubeconfig, tmp_path, config)
    op.start()
    yield op
    op.stop()
    if op.proc and op.proc.returncode not in (0, -15, None):
        print(op.logs())
