"""Ports for local servers that must be told a number before they start.

A server that can take port 0 and report what it got should (the teacher and hub servers, `distillery serve`,
the operator's liveness endpoint, a one-process torch group's store). The rest (etcd, the Kubernetes binaries,
Kueue, Karpenter, the operator's metrics, a torch group whose ranks must agree on a number beforehand) get one
from `free_port`, which is free when it returns but may be taken before the server binds it: callers that can
start again on a new port do (`DevCluster._start_listening`, the cluster tests' OperatorProcess).
"""

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000
"""Below this lie the well-known and commonly configured service ports."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing is bound to right now.

    Drawn below the kernel's ephemeral range, from which port-0 binds and outgoing connections take theirs: the
    many connections a test run opens then never take it in the moment before its server binds it, and only
    another caller of this function (at random, one port in thousands) can."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = LOWEST
    for _ in range(64):
        port = random.randrange(LOWEST, first_ephemeral) if first_ephemeral > LOWEST else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port below the ephemeral range")
