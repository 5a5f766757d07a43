"""The operator's ports as the cluster tests start it: a metrics port taken before the operator binds it costs a
restart, not the test; the liveness endpoint takes a port of its own and says which."""

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillery.devcluster.cluster import DevCluster
from distillery.devcluster.ports import free_port
from tests.cluster import operator_process
from tests.cluster.kube import Kube
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster
LIVENESS_AT = re.compile(r"liveness endpoint at (http://\S+)")


@pytest.fixture
def held() -> Iterator[int]:
    """A port another socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def test_a_taken_metrics_port_costs_a_restart_and_liveness_answers_on_the_port_it_chose(
        cluster: DevCluster, crd: None, kube: Kube, held: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([held, free_port()])
    monkeypatch.setattr(operator_process, "free_port", lambda: next(offered))
    op = OperatorProcess(cluster.kubeconfig, tmp_path)
    op.start()
    try:
        assert op.metrics_port != held and op.starts == 1
        assert "distillery_" in op.metrics()
        url = kube.wait_for(lambda: (m := LIVENESS_AT.search(op.logs())) and m.group(1), 30,
                            what="the liveness endpoint's URL in the log")

        def alive() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return r.status == 200
            except OSError:  # refused until the startup handler serves it
                return False

        kube.wait_for(alive, 60, what=f"{url} answering")
    finally:
        op.stop()
