"""Checks before a sweep touches the cluster: a bad or unreachable Ray address fails at once,
with the deadline passed to the connection attempt."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pipeline import cluster
from pipeline.errors import PipelineError
from tests.conftest import free_port


def test_an_unreachable_head_is_refused_within_the_reach_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts: list[float] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], timeout: float) -> Any:
        timeouts.append(timeout)
        return real(address, timeout=timeout)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    port = free_port()
    with pytest.raises(PipelineError, match=f"cannot reach the Ray head at 127.0.0.1:{port}"):
        cluster.check_ray_address(f"127.0.0.1:{port}")
    assert timeouts == [cluster.REACH_TIMEOUT_S]


@pytest.mark.parametrize("address", ["localhost", "10.0.0.5:", "ray://head:port"])
def test_a_malformed_address_is_named(address: str) -> None:
    with pytest.raises(PipelineError, match=f"Ray address {address!r}: expected host:port"):
        cluster.check_ray_address(address)


def test_auto_and_local_are_not_probed() -> None:
    cluster.check_ray_address("auto")
    cluster.check_ray_address("local")
