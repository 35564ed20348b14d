"""A tracking server that goes away and comes back, on real parts: `python -m pipeline
mlflow-server` over a SQLite database, stopped at once (SIGKILL, as a crash or a pod deleted
past its grace period stops it) while the pipeline writes to it, and started again on the same
port and database.

Through the CLI, one sweep meets them in turn: its driver is killed (SIGKILL, with its
local Ray) while its writes are queued for a server that is away; `tune --resume`, the server
back, delivers them first, then goes on through a 60 s outage and ends 0 with the retrain
registered. A second sweep ends while the server is away for good: exit 69, its writes kept in
its spool, which `python -m pipeline sync` delivers once the server is back. Every trial run is
then compared with Ray's own record: each epoch once, nothing lost.

Meanwhile, in this process, what must see the store (here: a lock) waits for it up to its
patience; a client of little patience fails in one line."""

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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from pipeline.errors import StoreAway
from pipeline.tracking.locks import StoreLock
from pipeline.tracking.spool import spools_of
from pipeline.tracking.store import Client, open_client
from tests.conftest import (
    SPACES,
    answers,
    background,
    cli_env,
    free_port,
    kept_environment,
    one_worker,
    ray_results,
    run_cli,
    wait_until,
)
from tests.test_tracking_trials import SCORES

pytestmark = [pytest.mark.slow, one_worker("outages")]


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


@dataclass
class Waited:
    """A lock taken while the store was away (by a client of ample patience) and a call of a
    client of little patience; what the store's clients said meanwhile."""

    lock_taken: bool  # once the store was back, and by this process
    hasty: str  # the hasty client's error
    said: list[str] = field(default_factory=list)

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


@contextlib.contextmanager
def waits_for(patient: Client, hasty: Client) -> Iterator[Waited]:
    """While their server is away (on entry) until it is back (on exit): a lock taken by the
    `patient` client from a thread, which waits for it, and a call of the `hasty` one, which
    does not."""
    waited = Waited(False, "")
    told = logging.Handler(logging.INFO)
    told.emit = waited.emit  # type: ignore[method-assign]
    store_log = logging.getLogger("pipeline.tracking.store")
    store_log.addHandler(told)
    level = store_log.level
    store_log.setLevel(logging.INFO)
    # One try per request: the pipeline's waits are what is tested, not MLflow's retries.
    with kept_environment():
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
        lock = StoreLock(patient, "outage")
        taking = threading.Thread(target=lock.acquire)
        taking.start()
        try:
            hasty.search_experiments()
        except StoreAway as away:
            waited.hasty = str(away)
        try:
            yield waited
            taking.join(timeout=120)
            holder = lock.read()
            waited.lock_taken = holder is not None and holder.id == lock.holder.id
            lock.release()
        finally:
            store_log.removeHandler(told)
            store_log.setLevel(level)


@dataclass
class Outages:
    folder: Path
    client: MlflowClient
    outputs: dict[str, str]
    codes: dict[str, int]
    kept_at_kill: int  # writes the killed driver left in its spool
    waited: Waited  # what the test process asked of the store during the 60 s outage

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
        recorded = ray_results(ray)
        wait_until(lambda: ray_results(ray) > recorded, 300, "the resumed trials", None, resumed)
        patient, hasty = (
            open_client(server.uri, patience=300),
            open_client(server.uri, patience=0.5),
        )
    with contextlib.ExitStack() as back:
        with waits_for(patient, hasty) as waited:  # the lock waits, the hasty client does not
            time.sleep(AWAY_S)
            back.enter_context(server.running())
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
        client = MlflowClient(server.uri)
        yield Outages(folder, client, outputs, codes, kept_at_kill, waited)


def assert_as_ray_recorded(outages: Outages, parent: Run) -> tuple[int, set[str]]:
    """Each trial run of the sweep holds its params and each epoch Ray recorded for it, once.
    Ray's folders of trials its saved state never named (started as their driver was killed)
    have deleted runs; so may trials that reported nothing Ray kept (their start reached the
    store). The epochs of the trials that count, and the trial ids of the deleted runs."""
    client = outages.client
    children = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    found = client.search_runs([parent.info.experiment_id], children)
    trials = {run.data.tags["trial_id"]: run for run in found if "trial_id" in run.data.tags}
    deleted = client.search_runs(
        [parent.info.experiment_id], children, run_view_type=ViewType.DELETED_ONLY
    )
    recorded: dict[str, list[int]] = {}
    for results in Path(parent.data.tags["sweep_path"]).glob("*/result.json"):
        lines = [json.loads(line) for line in results.read_text().splitlines()]
        recorded[lines[0]["trial_id"]] = sorted({int(line["epoch"]) for line in lines})
    lost = {run.data.tags["trial_id"] for run in deleted}
    assert set(trials) <= set(recorded)
    assert set(recorded) - set(trials) <= lost and not lost & set(trials)
    for trial_id, run in trials.items():
        assert run.info.status == "FINISHED", trial_id
        assert run.data.tags["trial_state"] == "completed" and run.data.params
        for name in SCORES:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert steps == recorded[trial_id], (trial_id, name, steps)
    return sum(len(recorded[trial_id]) for trial_id in trials), lost


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
    epochs, lost = assert_as_ray_recorded(outages, first)
    # The runs the resume deleted, as it said: trials Ray never saved, and the earlier runs of
    # trials whose checkpoint was gone, restarted under new ids.
    flat = " ".join(said.split())
    told = re.findall(r"deleted (\d+) run\(s\) of trials the interrupted sweep never saved", flat)
    told += re.findall(r"deleted the earlier runs of the (\d+) trial\(s\) restarted", flat)
    assert len(lost) == sum(int(count) for count in told), flat[-3000:]
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
    assert assert_as_ray_recorded(outages, outages.sweeps()[1])[1] == set()
    assert not list((outages.folder / "mlruns" / "spool").rglob("*.jsonl"))


def test_what_must_see_the_store_waits_for_it_or_fails_in_one_line(outages: Outages) -> None:
    """During the 60 s outage a lock (the sweep's, a registration's) waited for the store and
    was taken once it was back, told in one line when it began waiting and one when the store
    was back; a client with half a second of patience gave up in one line naming the setting."""
    waited = outages.waited
    assert waited.lock_taken, waited.said
    # The lock's create waits; or, cut off in a way that may have landed (a reset, a timeout),
    # it is not sent again and the lock's read waits instead: one line either way.
    lock_calls = ("(create_registered_model: ", "(get_registered_model: ")
    assert [
        line.split(" (")[0] for line in waited.said if any(call in line for call in lock_calls)
    ] == ["tracking store unreachable"], waited.said
    assert len([line for line in waited.said if line.startswith("tracking store back after")]) == 1
    hasty = waited.hasty
    assert hasty.startswith("tracking store unreachable for ") and "\n" not in hasty
    assert "(PIPELINE_TRACKING_OUTAGE_TIMEOUT 0 s): search_experiments failed: " in hasty
