"""The tracking store: the one place that builds MLflow's client, checks a server answers, and
finds or creates an experiment."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError

Client = MlflowClient  # what the functions of this package take; callers never build one
SERVER_TIMEOUT_S = 8.0  # an unreachable tracking server fails the command within this


def open_client(tracking_uri: str) -> Client:
    """A client of the tracking store (and its model registry) at `tracking_uri`."""
    make_local_store(tracking_uri)
    return MlflowClient(tracking_uri)


def make_local_store(tracking_uri: str) -> None:
    """Create the folder of a SQLite store (MLflow creates the database itself)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def check_tracking_server(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast when an http(s) tracking server does not answer its /health endpoint.

    Retried for `timeout_s` (a server that is restarting gets a moment); stores that are not
    servers (SQLite, PostgreSQL) are left to MLflow.
    """
    if not uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=min(4.0, remaining)):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # answering, e.g. 401 from an authenticating proxy
                return
            problem = f"HTTP {exc.code}"
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            problem = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        if deadline - time.monotonic() < 1.0:
            raise PipelineError(
                f"MLflow tracking server {uri} cannot be reached ({problem}); start it "
                "(make mlflow-server) or unset MLFLOW_TRACKING_URI to use the local store"
            )
        time.sleep(1.0)


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` for the block (model logging and loading use
    it; everything else passes the URI to a client explicitly)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def ensure_experiment(client: Client, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`, if given) when new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise PipelineError(
                f"MLflow experiment '{name}' is deleted; restore it or pick another name"
            )
        return str(found.experiment_id)
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return str(client.create_experiment(name, artifact_location=location))


def experiment_id(client: Client, name: str) -> str:
    """The id of an existing experiment; a missing one is an error saying to run a sweep."""
    found = client.get_experiment_by_name(name)
    if found is None:
        raise PipelineError(f"no MLflow experiment '{name}'; run a sweep first")
    return str(found.experiment_id)
