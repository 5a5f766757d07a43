"""Session-scoped real control plane; each test gets its own namespace."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from distillery.devcluster.cluster import DevCluster
from tests.cluster.kube import Kube, install_crd, running_cluster
from tests.cluster.operator_process import OperatorProcess


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


@pytest.fixture(scope="session")
def crd(kube: Kube) -> None:
    install_crd(kube)


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
