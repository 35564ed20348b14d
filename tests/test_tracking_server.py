"""A real MLflow tracking server (`python -m pipeline mlflow-server`) on a real PostgreSQL: a sweep,
retrain and promote through MLFLOW_TRACKING_URI=http://..., all read back through the server."""

from __future__ import annotations

import os
import secrets
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SPACES, background, cli_env, free_port, run_cli, wait_until

pytestmark = pytest.mark.slow
# An existing database to connect to for creating the test's own (CI: `test`, trust auth).
ADMIN_URL = os.environ.get("PIPELINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MODEL = "smoke-digits-mlp"


def admin_connection() -> psycopg.Connection:
    """An autocommit connection for CREATE/DROP DATABASE; skip (or fail, under
    REQUIRE_POSTGRES=1, as in CI) when PostgreSQL cannot be reached."""
    try:
        connection = psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL at {ADMIN_URL}: {str(exc).strip()}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return connection


@dataclass
class Server:
    uri: str
    database_url: str
    artifacts: Path


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    connection = admin_connection()
    database = f"mlflow_test_{secrets.token_hex(4)}"
    connection.execute(f"CREATE DATABASE {database}")
    base = ADMIN_URL.rsplit("/", 1)[0]
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = cli_env(
        MLFLOW_BACKEND_STORE_URI=f"{base}/{database}",
        MLFLOW_ARTIFACTS_DESTINATION=str(folder / "artifacts"),
        MLFLOW_SERVER_PORT=str(port),
    )
    command = [sys.executable, "-m", "pipeline", "mlflow-server", "--workers", "1"]
    try:
        with background(command, env, folder, folder / "server.log") as process:
            # The first start creates MLflow's schema in the empty database.
            wait_until(lambda: healthy(uri), 120, "mlflow server", folder / "server.log", process)
            yield Server(uri, f"{base}/{database}", folder / "artifacts")
    finally:
        connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        connection.close()


@pytest.fixture(scope="module")
def cycle(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tune (with its retrain) and promote, through the server only."""
    folder = tmp_path_factory.mktemp("client")
    for command in (["tune", "--space", str(SPACES / "smoke.yaml")], ["promote", "--model", MODEL]):
        done = run_cli(folder, *command, MLFLOW_TRACKING_URI=server.uri)
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_runs_metrics_and_artifacts_are_readable_through_the_server(
    server: Server, cycle: Path
) -> None:
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "sweep_path" in r.data.tags]
    trials = [r for r in runs if "trial_id" in r.data.tags]
    [retrain] = [r for r in runs if r.info.run_name == "retrain"]
    assert parent.info.status == "FINISHED" and len(trials) == 8
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(trial.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert retrain.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # Artifacts go through the server into its destination, not into the client's folder.
    local = client.download_artifacts(parent.info.run_id, "trials.csv", str(cycle))
    assert Path(local).read_text().startswith("trial_id,")
    assert list(server.artifacts.rglob("trials.csv"))
    assert not list(cycle.rglob("mlflow.db")) and not (cycle / "mlruns" / "artifacts").exists()


def test_model_versions_and_aliases_are_readable_through_the_server(
    server: Server, cycle: Path
) -> None:
    client = MlflowClient(server.uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["promotion.decision"] == "promoted"
    assert list(server.artifacts.rglob("model.pt2"))


def test_everything_is_stored_in_postgresql(server: Server, cycle: Path) -> None:
    with psycopg.connect(server.database_url) as connection:
        [(runs,)] = connection.execute("SELECT count(*) FROM runs").fetchall()
        assert runs == 10  # parent, 8 trials, retrain
        aliases = connection.execute("SELECT name, version FROM registered_model_aliases")
        assert aliases.fetchall() == [(MODEL, 1)]


def test_predict_reads_the_champion_through_the_server(server: Server, cycle: Path) -> None:
    rows, output = cycle / "rows.csv", cycle / "predictions.csv"
    for command in (
        ["export-test-rows", "--model", MODEL, "--output", str(rows)],
        ["predict", "--model", MODEL, "--input", str(rows), "--output", str(output)],
    ):
        done = run_cli(cycle, *command, MLFLOW_TRACKING_URI=server.uri)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "labelled rows (logged test_acc" in done.stdout


def test_server_refuses_a_backend_it_cannot_open(tmp_path: Path) -> None:
    done = run_cli(
        tmp_path,
        "mlflow-server",
        MLFLOW_BACKEND_STORE_URI="postgresql://postgres:s3cret@127.0.0.1:1/none",
    )
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "cannot open the backend store postgresql://postgres:***@127.0.0.1:1/none" in message
    assert "s3cret" not in done.stderr + done.stdout
