"""The tracking-server check gives up at its deadline: the mechanism, on a virtual clock."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.tracking import store
from tests.conftest import free_port


class Clock:
    """monotonic() and sleep() of a virtual clock that only sleeping (or a timeout) moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(store.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(store.time, "sleep", clock.sleep)
    return clock


def spy_on_urlopen(monkeypatch: pytest.MonkeyPatch, attempts: list[float]) -> None:
    real = urllib.request.urlopen

    def urlopen(url: str, timeout: float) -> Any:
        attempts.append(timeout)
        return real(url, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_a_refusing_server_is_retried_once_a_second_until_the_deadline(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[float] = []
    spy_on_urlopen(monkeypatch, attempts)
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PipelineError, match=f"MLflow tracking server {uri} cannot be reached"):
        store.check_tracking_server(uri)
    assert clock.now == pytest.approx(store.SERVER_TIMEOUT_S)
    assert len(attempts) == int(store.SERVER_TIMEOUT_S) + 1
    assert all(timeout <= 4.0 for timeout in attempts)


def test_a_silent_server_costs_at_most_the_deadline(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that drops packets: each attempt waits its whole timeout."""
    timeouts: list[float] = []

    def silent(url: str, timeout: float) -> Any:
        timeouts.append(timeout)
        clock.sleep(timeout)
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(urllib.request, "urlopen", silent)
    with pytest.raises(PipelineError, match=r"cannot be reached \(timed out\)"):
        store.check_tracking_server("http://10.255.255.1:5000")
    assert clock.now <= store.SERVER_TIMEOUT_S + 1.0
    assert all(timeout <= 4.0 for timeout in timeouts)


def test_stores_that_are_not_servers_are_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []
    spy_on_urlopen(monkeypatch, attempts)
    store.check_tracking_server("sqlite:///nowhere/mlflow.db")
    store.check_tracking_server("postgresql://mlflow@db:5432/mlflow")
    assert attempts == []
