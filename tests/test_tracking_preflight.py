"""The tracking-store preflight: a server must answer as MLflow, a database must connect within
the deadline given to its driver, a SQLite file must be writable; each refusal is one line. The
server check's deadline is tested on a virtual clock, the database's by what its driver is told.
Later, a call that failed for want of the store may be made again once it is back, but one that
creates something only when its request never reached the store."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from pipeline.errors import PipelineError
from pipeline.tracking import preflight
from pipeline.tracking.store import may_wait_for, wait_for_store
from tests.conftest import free_port, http_serving


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
    monkeypatch.setattr(preflight.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(preflight.time, "sleep", clock.sleep)
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
        preflight.check_server(uri, preflight.STORE_TIMEOUT_S)
    assert clock.now == pytest.approx(preflight.STORE_TIMEOUT_S)
    assert len(attempts) == int(preflight.STORE_TIMEOUT_S) + 1
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
        preflight.check_server("http://10.255.255.1:5000", preflight.STORE_TIMEOUT_S)
    assert clock.now <= preflight.STORE_TIMEOUT_S + 1.0
    assert all(timeout <= 4.0 for timeout in timeouts)


def test_stores_that_are_not_servers_are_not_probed_over_http(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    attempts: list[float] = []
    spy_on_urlopen(monkeypatch, attempts)
    preflight.check_tracking_store(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert attempts == []


class Answer(BaseHTTPRequestHandler):
    """Answers every GET with the class's status and body."""

    status, body = 200, b"OK"

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def http_answering(status: int, body: bytes) -> contextlib.AbstractContextManager[str]:
    return http_serving(type("Handler", (Answer,), {"status": status, "body": body}))


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b"not found", "is not an MLflow tracking server: /health answered HTTP 404"),
        (200, b"<html>welcome to nginx</html>", "is not an MLflow tracking server"),
    ],
)
def test_a_server_that_is_not_mlflow_is_refused(status: int, body: bytes, message: str) -> None:
    with http_answering(status, body) as uri, pytest.raises(PipelineError, match=message):
        preflight.check_server(uri, 2.0)


def test_mlflow_and_an_authenticating_proxy_pass() -> None:
    for status, body in ((200, b"OK"), (401, b"")):
        with http_answering(status, body) as uri:
            preflight.check_server(uri, 2.0)


def test_a_missing_postgresql_database_is_one_line_with_the_password_masked(
    postgres: str,
) -> None:
    url = make_url(postgres).set(password="s3cret", database="does_not_exist")
    uri = url.render_as_string(hide_password=False)
    with pytest.raises(PipelineError) as raised:
        preflight.check_tracking_store(uri)
    message = str(raised.value)
    assert "does_not_exist" in message and "does not exist" in message
    assert "s3cret" not in message and "***" in message
    assert "\n" not in message


def test_a_silent_database_is_given_up_at_the_deadline_told_to_its_driver() -> None:
    """A host that accepts the connection and never answers: libpq waits connect_timeout."""
    assert preflight.connect_arguments("postgresql+psycopg", 3.5) == {"connect_timeout": 4}
    assert preflight.connect_arguments("postgresql", 0.5) == {"connect_timeout": 2}
    assert preflight.connect_arguments("mysql+pymysql", 8) == {"connect_timeout": 8}
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"postgresql+psycopg://u:pw@127.0.0.1:{silent.getsockname()[1]}/mlflow"
        with pytest.raises(PipelineError, match=r"cannot be used \(within 2 s\): .*timeout"):
            preflight.check_database(uri, 2.0)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mlruns", "is a folder; MLflow stores runs in a database"),
        ("file:///tmp/mlruns", "is a folder"),
        ("sqlite:////etc/hostname/under/a/file/mlflow.db", "cannot create /etc/hostname/under"),
        ("sqlite://", "expected sqlite:///path/to/mlflow.db"),
        ("postgresql://u:pw@127.0.0.1:1/x", "cannot be used"),
        ("nosuchdb://u@h/x", "no driver for nosuchdb"),
    ],
)
def test_bad_tracking_uris_are_one_line(uri: str, message: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(message)) as raised:
        preflight.check_tracking_store(uri)
    assert "\n" not in str(raised.value) and "pw" not in str(raised.value)


def test_a_call_that_creates_is_made_again_only_if_it_never_reached_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's own errors: a refused connection (the request never left) against one that
    was accepted and never answered (the run may have been made)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with pytest.raises(MlflowException) as refused:
        MlflowClient(f"http://127.0.0.1:{free_port()}").create_run("0")
    assert may_wait_for("create_run", refused.value) and may_wait_for("get_run", refused.value)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(MlflowException) as unanswered:
            MlflowClient(f"http://127.0.0.1:{silent.getsockname()[1]}").create_run("0")
    assert not may_wait_for("create_run", unanswered.value)
    assert may_wait_for("get_run", unanswered.value)
    gone = MlflowException("Run 'x' not found", error_code="RESOURCE_DOES_NOT_EXIST")
    assert not may_wait_for("get_run", gone), "what the store answered is no outage"


def test_an_outage_a_cut_off_create_leaves_is_waited_out_and_ended_by_the_next_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock's create refused (the store away), then cut off (it may have landed: not made
    again); the lock's read that follows waits on within the same patience, and whichever call
    finds the store back says so: one line when the outage began, one when it ended."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with pytest.raises(MlflowException) as refused:
        MlflowClient(f"http://127.0.0.1:{free_port()}").create_registered_model("lock")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(MlflowException) as unanswered:
            MlflowClient(f"http://127.0.0.1:{silent.getsockname()[1]}").create_registered_model(
                "lock"
            )
    answers: list[BaseException | str] = [refused.value, unanswered.value]

    def create() -> str:
        raise answers.pop(0)

    reads: list[BaseException | str] = [refused.value, "held by us"]

    def read() -> str:
        answer = reads.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    caplog.set_level(logging.INFO, logger="pipeline.tracking.store")
    with pytest.raises(MlflowException):
        wait_for_store(create, "create_registered_model", 30.0)
    assert wait_for_store(read, "get_registered_model", 30.0) == "held by us"
    said = [record.getMessage().split(" (")[0] for record in caplog.records]
    assert said[0] == "tracking store unreachable" and len(said) == 2, said
    assert said[1].startswith("tracking store back after "), said
    assert answers == [] and reads == []
    caplog.clear()
    assert wait_for_store(lambda: "at once", "get_registered_model", 30.0) == "at once"
    assert caplog.records == [], "the outage was ended: the next call owes no line"
