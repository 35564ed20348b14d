"""A tracking server that goes away and comes back, on real parts: `python -m pipeline
mlflow-server` over a SQLite database, stopped (SIGTERM, as a restart or a rolling deploy stops
it) while the trial recorder writes, and started again on the same port and database. What the
recorder was given is all in the store afterwards, once: no metric step twice, nothing lost;
what it could not deliver stays in its spool, which `python -m pipeline sync` delivers. What
must see the store (here: a lock) waits for it up to its patience, then fails in one line."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import StoreAway
from pipeline.tracking.locks import StoreLock
from pipeline.tracking.spool import spools_of
from pipeline.tracking.store import open_client
from pipeline.tracking.trials import TrialRecorder
from tests.conftest import answers, background, cli_env, free_port, run_cli, wait_until
from tests.test_tracking_trials import SCORES, epoch

pytestmark = pytest.mark.slow

EPOCHS = 8  # per trial; the server is away from epoch 4 of the first trial to the end


@dataclass
class Server:
    """An MLflow tracking server over one SQLite database, started and stopped at will."""

    folder: Path
    port: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        database = f"sqlite:///{self.folder / 'mlflow.db'}"
        command = [sys.executable, "-m", "pipeline", "mlflow-server", "--workers", "1"]
        command += ["--backend-store-uri", database, "--port", str(self.port)]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = self.folder / "server.log"
        with background(command, cli_env(), self.folder, log) as process:
            wait_until(lambda: answers(f"{self.uri}/health"), 120, "mlflow-server", log, process)
            yield


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    # One try per request: the recorder's own retries are what is tested, not MLflow's.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return Server(tmp_path, free_port())


def sweep_on(server: Server, spool: Path, outage_timeout: float) -> tuple[TrialRecorder, str]:
    """A parent run on the server, and a recorder of its trials; the recorder, the run."""
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("outage")
    parent = client.create_run(experiment_id).info.run_id
    recorder = TrialRecorder(
        server.uri,
        experiment_id,
        parent,
        metric="val_acc",
        mode="max",
        scores=SCORES,
        spool_dir=spool,
        outage_timeout=outage_timeout,
        flush_seconds=0,
    )
    return recorder, parent


def train(recorder: TrialRecorder, trial_id: str, epochs: range) -> None:
    for n in epochs:
        recorder.result(trial_id, epoch(n, 0.5 + n / 100))


def assert_complete(client: MlflowClient, parent: str) -> None:
    """Both trials' runs hold their params, every epoch once, their best epoch and their end."""
    experiment_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(c.data.tags["trial_id"] for c in children) == ["a", "b"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params == {"optimizer": "adam"}
        assert child.data.tags["trial_state"] == "completed"
        assert child.data.tags["host"] == "here"
        for name in SCORES:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)
        assert child.data.metrics["best_epoch"] == EPOCHS


def test_a_server_away_mid_sweep_gets_every_write_once_when_back_or_by_sync(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two sweeps write through one outage. The first waits for the server at its end (its
    outage timeout is long): the server comes back and gets everything, the outage told in two
    lines. The second gives up at once (a timeout of 0.5 s): its writes stay in its spool,
    `sync` says the server is away (69), then, the server back, delivers them; a second `sync`
    finds nothing to do. A lock taken during the outage waits for the server and is taken once
    it is back; a client of little patience gives up with one line."""
    caplog.set_level(logging.INFO, logger="pipeline")
    spool = tmp_path / "spool"
    with server.running():
        waits, waiting_parent = sweep_on(server, spool, outage_timeout=120)
        gives_up, parent = sweep_on(server, spool, outage_timeout=0.5)
        for recorder in (waits, gives_up):
            recorder.start("a", 1, {"optimizer": "adam"})
            train(recorder, "a", range(1, 4))
        patient = open_client(server.uri, patience=120)
        hasty = open_client(server.uri, patience=0.5)
    # Taken while the server is away: the lock waits for it.
    lock = StoreLock(patient, "outage")
    taking = threading.Thread(target=lock.acquire)
    taking.start()
    with pytest.raises(StoreAway) as hurried:
        hasty.search_experiments()
    said = str(hurried.value)
    assert said.startswith("tracking store unreachable for ") and "\n" not in said
    assert "(PIPELINE_TRACKING_OUTAGE_TIMEOUT 0 s): search_experiments failed: " in said
    # The server is away: the trials go on, their writes queue.
    for recorder in (waits, gives_up):
        train(recorder, "a", range(4, EPOCHS + 1))
        recorder.end("a", "completed", None)
        recorder.start("b", 2, {"optimizer": "adam"})
        train(recorder, "b", range(1, EPOCHS + 1))
        recorder.end("b", "completed", None)
    gives_up.close()
    assert gives_up.undelivered > 0 and gives_up.spool_path.exists()
    assert "tracking store unreachable since" in caplog.text
    env = {"MLFLOW_TRACKING_URI": server.uri, "PIPELINE_SPOOL_DIR": str(spool)}
    away = run_cli(tmp_path, "sync", PIPELINE_TRACKING_OUTAGE_TIMEOUT="0", **env)
    assert away.returncode == 69, away.stdout + away.stderr
    said = " ".join(away.stderr.replace(" \n", "").split())
    assert "tracking writes stay kept in" in said and str(gives_up.spool_path) in said
    with server.running():
        taking.join(timeout=120)
        holder = lock.read()
        assert holder is not None and holder.id == lock.holder.id, "taken once the store is back"
        lock.release()
        told = [r.getMessage() for r in caplog.records if r.name.endswith("store")]
        assert [line.split(" (")[0] for line in told if "create_registered_model" in line] == [
            "tracking store unreachable"
        ], told
        assert [line for line in told if line.startswith("tracking store back after")], told
        waits.close()  # waits for the store: it is back
        assert waits.undelivered == 0 and not waits.errors
        client = MlflowClient(server.uri)
        assert_complete(client, waiting_parent)
        said = [r.getMessage() for r in caplog.records if r.name.endswith("spool")]
        back = [line for line in said if line.startswith("tracking store back after")]
        assert len(back) == 1, said
        synced = run_cli(tmp_path, "sync", **env)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert f"delivered {gives_up.undelivered} kept tracking writes" in synced.stdout
        assert_complete(client, parent)
        again = run_cli(tmp_path, "sync", **env)
        assert again.returncode == 0 and "nothing kept" in again.stdout
    assert spools_of(spool, server.uri) == [], "everything delivered: no spool left"
