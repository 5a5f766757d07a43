"""The operator's liveness endpoint: any free port on request, refused until served, then answering."""

import asyncio
import socket
import urllib.request

import pytest

from distillery.controller.liveness import LivenessEndpoint


async def test_port_zero_takes_a_free_port_and_reports_it() -> None:
    endpoint = LivenessEndpoint("http://127.0.0.1:0/healthz")
    try:
        assert endpoint.port != 0 and endpoint.url == f"http://127.0.0.1:{endpoint.port}/healthz"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=5).close()
        await endpoint.serve()
        reply = await _get(endpoint.url)
        assert reply == (200, b"{}")
    finally:
        await endpoint.close()


def test_a_taken_port_fails_at_construction() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        with pytest.raises(OSError, match="in use"):
            LivenessEndpoint(f"http://127.0.0.1:{holder.getsockname()[1]}/healthz")


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="expected http"):
        LivenessEndpoint("https://127.0.0.1:0/healthz")


async def _get(url: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()

    return await asyncio.to_thread(fetch)
