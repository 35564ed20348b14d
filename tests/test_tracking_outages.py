"""A tracking server that goes away and comes back, on real parts: `python -m pipeline
mlflow-server` over a SQLite database, stopped at once (SIGKILL, as a crash or a pod deleted
past its grace period stops it) while the pipeline writes to it, and started again on the same
port and database.

Through the CLI, one sweep meets every case of issue 26: its driver is killed (SIGKILL, with its
local Ray) while its writes are queued for a server that is away; `tune --resume`, the server
back, delivers them first, then goes on through a 60 s outage and ends 0 with the retrain
registered. A second sweep ends while the server is away for good: exit 69, its writes kept in
its spool, which `python -m pipeline sync` delivers once the server is back. Every trial run is
then compared with Ray's own record: each epoch once, nothing lost.

In-process, the trial recorder gets every write through an outage once, and what must see the
store (here: a lock) waits for it up to its patience, then fails in one line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.errors import StoreAway
from pipeline.tracking.locks import StoreLock
from pipeline.tracking.spool import spools_of
from pipeline.tracking.store import open_client
from pipeline.tracking.trials import TrialRecorder
from tests.conftest import (
    SPACES,
    answers,
    background,
    cli_env,
    free_port,
    one_worker,
    run_cli,
    wait_until,
)
from tests.test_tracking_trials import SCORES, epoch

pytestmark = [pytest.mark.slow, one_worker("outages")]

EPOCHS = 8  # per trial; the server is away from epoch 4 of the first trial to the end


@dataclass
class Server:
    """An MLflow tracking server over one SQLite database, started and stopped at will."""

    folder: Path
    port: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.folder / "mlflow.db"

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        command = [sys.executable, "-m", "pipeline", "mlflow-server", "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.database}"]
        command += ["--port", str(self.port)]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = self.folder / "server.log"
        with background(command, cli_env(), self.folder, log) as process:
            wait_until(lambda: answers(f"{self.uri}/health"), 120, "mlflow-server", log, process)
            yield
            # Gone at once, as a crashed server or a pod deleted past its grace period (a
            # graceful stop serves its clients' open connections for a while yet).
            os.killpg(process.pid, signal.SIGKILL)

    def count(self, query: str) -> int:
        """One number the server's database holds now (0 before its tables exist)."""
        with contextlib.closing(sqlite3.connect(self.database)) as connection:
            try:
                return int(connection.execute(query).fetchone()[0])
            except sqlite3.OperationalError:
                return 0


# --- through the CLI ---------------------------------------------------------------------------

SWEEP = ["tune", "--space", str(SPACES / "smoke.yaml"), "--set", "scheduler.name=fifo"]
SWEEP += ["--set", "budget.checkpoint_seconds=0"]  # resumed trials go on from their last epoch
KILLED = [*SWEEP, "--set", "budget.num_samples=8", "--set", "budget.max_epochs=10"]
AWAY_S = 60  # the outage the resumed sweep rides through
TRIAL_RUNS = "SELECT count(*) FROM tags WHERE key = 'trial_id'"


def pending(spool_dir: Path, uri: str) -> int:
    """Writes kept in the spools for the store at `uri`, not yet accepted."""
    return sum(len(spool.pending()) for spool in spools_of(spool_dir, uri))


def ray_epochs(storage: Path) -> int:
    """Results Ray has recorded so far in the trial folders under `storage`."""
    return sum(len(f.read_text().splitlines()) for f in storage.glob("*/*/result.json"))


@dataclass
class Outages:
    folder: Path
    client: MlflowClient
    outputs: dict[str, str]
    codes: dict[str, int]
    kept_at_kill: int  # writes the killed driver left in its spool

    def sweeps(self) -> list[Run]:
        """The sweeps' parent runs, oldest first."""
        experiment = self.client.get_experiment_by_name("smoke")
        found = self.client.search_runs([experiment.experiment_id], "", order_by=["start_time"])
        return [run for run in found if "sweep_path" in run.data.tags]


@pytest.fixture(scope="module")
def outages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outages]:
    folder = tmp_path_factory.mktemp("outages")
    server = Server(folder, free_port())
    # Unbuffered: what a driver said is read while it runs, and kept when it is killed.
    env = cli_env(MLFLOW_TRACKING_URI=server.uri, PYTHONUNBUFFERED="1")
    spool, ray = folder / "mlruns" / "spool", folder / "mlruns" / "ray"
    outputs: dict[str, str] = {}
    codes: dict[str, int] = {}

    def start(name: str, *args: str, **settings: str) -> subprocess.Popen[bytes]:
        log = (folder / f"{name}.out").open("wb")
        command = [sys.executable, "-m", "pipeline", *args]
        return subprocess.Popen(
            command,
            cwd=folder,
            env={**env, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ended(name: str, process: subprocess.Popen[bytes]) -> None:
        codes[name] = process.wait(timeout=600)
        outputs[name] = (folder / f"{name}.out").read_text()

    def said(name: str) -> str:
        return (folder / f"{name}.out").read_text()

    # 1. The server goes away once the first trial run is made; the driver is killed (with its
    # local Ray, as when its machine dies) with writes queued for it.
    with server.running():
        killed = start("killed", *KILLED)
        wait_until(lambda: server.count(TRIAL_RUNS) >= 1, 300, "a trial run", None, killed)
    wait_until(lambda: pending(spool, server.uri) >= 3, 120, "writes queued", None, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    ended("killed", killed)
    kept_at_kill = pending(spool, server.uri)
    # 2. The server back, the sweep resumed: its kept writes first, then trials, through a
    # 60 s outage that begins once Ray records results again; it ends 0, its model registered.
    with server.running():
        resumed = start("resumed", *KILLED, "--resume")
        wait_until(
            lambda: "tracking writes its last driver kept" in said("resumed"),
            300,
            "the kept writes delivered",
            folder / "resumed.out",
            resumed,
        )
        recorded = ray_epochs(ray)
        wait_until(lambda: ray_epochs(ray) > recorded, 300, "the resumed trials", None, resumed)
    time.sleep(AWAY_S)
    with server.running():
        ended("resumed", resumed)
        # 3. A second sweep, the server away from its first trial run to its end (and past
        # its outage timeout): exit 69, its writes kept; `sync` delivers them once it is back.
        runs_before = server.count(TRIAL_RUNS)
        away = start(
            "away",
            *SWEEP,
            "--set",
            "budget.num_samples=3",
            "--set",
            "budget.max_epochs=6",
            "--set",
            "search.n_initial_points=1",
            "--no-retrain",
            PIPELINE_TRACKING_OUTAGE_TIMEOUT="5",
        )
        wait_until(lambda: server.count(TRIAL_RUNS) > runs_before, 300, "a trial run", None, away)
    ended("away", away)
    with server.running():
        for name in ("sync", "sync-again"):
            done = run_cli(folder, "sync", MLFLOW_TRACKING_URI=server.uri)
            outputs[name], codes[name] = done.stdout + done.stderr, done.returncode
        yield Outages(folder, MlflowClient(server.uri), outputs, codes, kept_at_kill)


def assert_as_ray_recorded(outages: Outages, parent: Run) -> int:
    """Each trial run of the sweep holds its params and each epoch Ray recorded for it, once;
    the epochs in all."""
    client = outages.client
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    trials = {run.data.tags["trial_id"]: run for run in children if "trial_id" in run.data.tags}
    recorded: dict[str, list[int]] = {}
    for results in Path(parent.data.tags["sweep_path"]).glob("*/result.json"):
        lines = [json.loads(line) for line in results.read_text().splitlines()]
        recorded[lines[0]["trial_id"]] = sorted({int(line["epoch"]) for line in lines})
    assert set(trials) == set(recorded)
    for trial_id, run in trials.items():
        assert run.info.status == "FINISHED", trial_id
        assert run.data.tags["trial_state"] == "completed" and run.data.params
        for name in SCORES:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert steps == recorded[trial_id], (trial_id, name, steps)
    return sum(len(epochs) for epochs in recorded.values())


def test_a_driver_killed_with_writes_queued_loses_none_of_them(outages: Outages) -> None:
    """The resume of the killed driver's sweep delivered what it kept, every write of it, before
    going on."""
    assert outages.codes["killed"] == -signal.SIGKILL
    assert outages.kept_at_kill >= 3
    resumed = outages.outputs["resumed"]
    assert f"delivered {outages.kept_at_kill} tracking writes its last driver kept" in resumed


def test_a_sweep_rides_through_a_server_away_60_s_and_registers_its_model(
    outages: Outages,
) -> None:
    """The resumed sweep ended 0 through the outage, told in two lines, and its trial runs
    match Ray's record (the epochs the killed driver never sent included); the epochs it
    printed are the store's; its retrain was registered; nothing is left running or locked."""
    said = outages.outputs["resumed"]
    assert outages.codes["resumed"] == 0, said[-3000:]
    began = [line for line in said.splitlines() if "tracking store unreachable" in line]
    back = [line for line in said.splitlines() if "tracking store back after" in line]
    assert len(began) == 1 and len(back) == 1, said[-3000:]
    seconds = int(re.search(r"back after (\d+) s", back[0]).group(1))  # type: ignore[union-attr]
    assert seconds >= AWAY_S
    assert "Retrying (" not in said and "Traceback" not in said
    first = outages.sweeps()[0]
    assert first.info.status == "FINISHED"
    epochs = assert_as_ray_recorded(outages, first)
    assert f"trials: 8 completed; {epochs} epochs trained" in said
    versions = outages.client.search_model_versions("name = 'smoke-digits-mlp'")
    assert [v.run_id for v in versions] != [] and "registered" in said
    running = outages.client.search_runs(
        [first.info.experiment_id], "attributes.status = 'RUNNING'"
    )
    assert [run.info.run_id for run in running] == [outages.sweeps()[1].info.run_id], (
        "only the second sweep's parent, which its driver could not end"
    )
    locks = outages.client.search_registered_models("name LIKE 'pipeline-lock.%'")
    assert f"pipeline-lock.sweep.{first.info.run_name}" not in [lock.name for lock in locks]


def test_a_server_away_to_the_end_exits_69_and_sync_delivers_what_was_kept(
    outages: Outages,
) -> None:
    """The second sweep ended 69 saying how many writes were kept and how to deliver them;
    `sync` delivered exactly those, and a second `sync` had nothing to do. Its trial runs then
    match Ray's record."""
    said = " ".join(outages.outputs["away"].split())
    assert outages.codes["away"] == 69, said[-3000:]
    kept = re.search(r"is unreachable: (\d+) writes kept in ", said)
    assert kept is not None, said[-3000:]
    assert "`tune --resume` delivers them" in said and "Traceback" not in said
    assert outages.codes["sync"] == 0, outages.outputs["sync"]
    assert (
        f"delivered {kept.group(1)} kept tracking writes of 1 sweep(s)" in outages.outputs["sync"]
    )
    assert outages.codes["sync-again"] == 0 and "nothing kept" in outages.outputs["sync-again"]
    assert_as_ray_recorded(outages, outages.sweeps()[1])
    assert not list((outages.folder / "mlruns" / "spool").rglob("*.jsonl"))


# --- the trial recorder and a lock, in this process --------------------------------------------


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


def test_a_server_away_mid_sweep_gets_every_write_once_it_is_back(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A recorder writes through an outage and waits for the server at its end (its outage
    timeout is long): the server comes back and gets everything, the outage told in two lines.
    A lock taken during the outage waits for the server and is taken once it is back; a client
    of little patience gives up with one line."""
    caplog.set_level(logging.INFO, logger="pipeline")
    spool = tmp_path / "spool"
    with server.running():
        waits, parent = sweep_on(server, spool, outage_timeout=120)
        waits.start("a", 1, {"optimizer": "adam"})
        train(waits, "a", range(1, 4))
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
    train(waits, "a", range(4, EPOCHS + 1))
    waits.end("a", "completed", None)
    waits.start("b", 2, {"optimizer": "adam"})
    train(waits, "b", range(1, EPOCHS + 1))
    waits.end("b", "completed", None)
    assert "tracking store unreachable since" in caplog.text
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
        assert_complete(MlflowClient(server.uri), parent)
        spooled = [r.getMessage() for r in caplog.records if r.name.endswith("spool")]
        back = [line for line in spooled if line.startswith("tracking store back after")]
        assert len(back) == 1, spooled
    assert spools_of(spool, server.uri) == [], "everything delivered: no spool left"
