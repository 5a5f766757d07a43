"""Ports for the local control plane's binaries: drawn where outgoing connections never look, and a start that
finds its port taken starts again on a new one."""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillery.devcluster import cluster as devcluster
from distillery.devcluster.ports import EPHEMERAL_RANGE, LOWEST, free_port

# Listens on the port it is given until killed, as etcd would; on a taken port it exits, saying so.
COMPONENT = "import socket, sys, time\ns = socket.create_server(('127.0.0.1', int(sys.argv[1])))\ntime.sleep(600)\n"


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert LOWEST <= port < first_ephemeral
        with socket.create_server(("127.0.0.1", port)):
            pass


@pytest.fixture
def held() -> Iterator[int]:
    """A port another process's socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.fixture
def dev_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[devcluster.DevCluster]:
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    c = devcluster.DevCluster("ports")
    c.logs.mkdir(parents=True)
    yield c
    for pid in (c.state() or devcluster.State({}, {})).pids.values():
        c._stop(pid)


def test_a_component_whose_port_is_taken_starts_again_on_a_new_one(
        dev_cluster: devcluster.DevCluster, held: int, monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([held, free_port()])
    monkeypatch.setattr(devcluster, "free_port", lambda: next(offered))
    state = devcluster.State(ports={}, pids={})

    dev_cluster._start_listening(state, "etcd", ("etcd",),
                                 lambda: [sys.executable, "-c", COMPONENT, str(state.ports["etcd"])], timeout=60)

    assert state.ports["etcd"] != held
    assert "Address already in use" in (dev_cluster.logs / "etcd.log").read_text()
    with socket.create_connection(("127.0.0.1", state.ports["etcd"]), timeout=5):
        pass


def test_a_component_that_fails_otherwise_is_not_started_again(
        dev_cluster: devcluster.DevCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[int] = []
    state = devcluster.State(ports={}, pids={})

    def command() -> list[str]:
        starts.append(state.ports["etcd"])
        return [sys.executable, "-c", "raise SystemExit('no data dir')"]

    with pytest.raises(RuntimeError, match="etcd exited"):
        dev_cluster._start_listening(state, "etcd", ("etcd",), command, timeout=60)
    assert len(starts) == 1
