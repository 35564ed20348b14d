"""The trial recorder on a real SQLite MLflow store, fed trial events as Tune's callback hands
them over (no Ray needed to produce them)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import LoggedData
from pipeline.tracking.spool import SenderProcess, Spool
from pipeline.tracking.store import open_client
from pipeline.tracking.trials import OWN_PROCESS_FROM_TRIALS, TrialRecorder, TrialWriter
from tests.conftest import http_serving

# A classification trial's scores, as `Experiment.trial_scores` names them.
SCORES = ("train_loss", "val_loss", "val_acc", "val_macro_f1", "val_auc")


def epoch(number: int, val_acc: float) -> dict[str, object]:
    return {
        "epoch": number,
        "train_loss": 1.0 / number,
        "val_loss": 1.0 - val_acc,
        "val_acc": val_acc,
        "val_macro_f1": val_acc,
        "val_auc": val_acc,
        "hostname": "here",
        "device": "cpu",
    }


def recorder_on(
    tmp_path: Path, trials: int = 1, uri: str | None = None
) -> tuple[TrialRecorder, MlflowClient, str, str]:
    """A recorder on a new store (at `uri` if given), for one sweep's parent run of `trials`:
    it, the store's client, the experiment and the parent run."""
    client: MlflowClient = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("trials")
    parent = client.create_run(experiment_id).info.run_id
    recorder = TrialRecorder(
        uri or client.tracking_uri,
        experiment_id,
        parent,
        metric="val_acc",
        mode="max",
        scores=SCORES,
        spool_dir=tmp_path / "spool",
        outage_timeout=60,
        flush_seconds=0,
        trials=trials,
    )
    return recorder, client, experiment_id, parent


# A sweep's writer: a thread of its driver, or, for many trials, a process of its own.
WRITERS = pytest.mark.parametrize("trials", [1, OWN_PROCESS_FROM_TRIALS], ids=["thread", "process"])


@WRITERS
def test_a_trials_best_is_its_best_smoothed_epoch_not_its_last_nor_its_peak(
    tmp_path: Path, trials: int
) -> None:
    """Each epoch is scored as the mean of the (up to) five centred on it: here epoch 2's
    (epochs 1-4), 0.7375, beats epoch 3's single-epoch peak of 0.95 (its mean 0.69) and the
    last epoch's 0.3 (its mean 0.4). The trial's run and what it tells the UI say epoch 2."""
    recorder, client, experiment_id, parent = recorder_on(tmp_path, trials)
    assert recorder.own_process == (trials >= OWN_PROCESS_FROM_TRIALS)
    recorder.start("t1", 1, {"optimizer": "adam"})
    scores = (0.2, 0.9, 0.95, 0.9, 0.5, 0.4, 0.3)
    for number, score in enumerate(scores, start=1):
        recorder.result("t1", epoch(number, score))
    recorder.end("t1", "completed", None)
    recorder.close()
    assert not recorder.errors
    # The writer's time in the store's calls, and the part of it its thread computed.
    assert 0 < recorder.cpu_seconds <= recorder.busy_seconds
    [run] = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    assert run.data.metrics["best_epoch"] == 2
    assert run.data.metrics["best_val_acc"] == pytest.approx(sum(scores[:4]) / 4)
    assert run.data.metrics["best_val_loss"] == pytest.approx(sum(1 - s for s in scores[:4]) / 4)
    # The summary is logged at the best epoch's step.
    [best] = client.get_metric_history(run.info.run_id, "best_val_acc")
    assert best.step == 2
    assert not recorder.spool_path.exists(), "all delivered: the spool is gone"


class HangsUp(BaseHTTPRequestHandler):
    """A tracking server whose database is away: healthy, yet every API call is hung up on."""

    def do_GET(self) -> None:
        if self.path != "/health":
            self.close_connection = True
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def do_POST(self) -> None:
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def hangs_up() -> Iterator[str]:
    with http_serving(HangsUp) as uri:
        yield uri


@WRITERS
def test_a_store_away_to_the_end_leaves_every_write_kept_and_says_so(
    tmp_path: Path,
    trials: int,
    hangs_up: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server whose every call fails: the writer (its process too) says when the store
    went away and, after the outage timeout, how many writes it kept; the spool keeps them."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    recorder, *_ = recorder_on(tmp_path, trials, hangs_up)
    recorder.outage_timeout = 1
    caplog.set_level(logging.INFO, logger="pipeline.tracking.spool")
    recorder.start("t1", 1, {"optimizer": "adam"})
    recorder.result("t1", epoch(1, 0.5))
    recorder.end("t1", "completed", None)
    recorder.close()
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.tracking.spool"]
    assert len(said) == 2 and said[0].startswith("tracking store unreachable since "), said
    assert said[1].startswith("tracking store still unreachable after "), said
    assert said[1].endswith(f"4 writes kept in {recorder.spool_path}"), said
    assert recorder.undelivered == 4 and not recorder.errors
    kept = [write["op"] for write in Spool(recorder.spool_path).pending()]
    assert kept == ["start", "log", "log", "end"]


def test_a_restarted_trial_repeats_no_epoch_and_records_its_best_one(tmp_path: Path) -> None:
    """Its node lost, a trial restarts from an older checkpoint and reports epochs 2 and 3
    again (other values): the first report of each epoch stands, and the best epoch is over all
    of them."""
    recorder, client, experiment_id, parent = recorder_on(tmp_path)
    recorder.start("t1", 3, {"optimizer": "adam", "hidden_layers": 2, "hidden_units": 64})
    for number, score in ((1, 0.5), (2, 0.9), (3, 0.7), (2, 0.1), (3, 0.2), (4, 0.8)):
        recorder.result("t1", epoch(number, score))
    recorder.end("t1", "completed", None)
    recorder.close()
    assert not recorder.errors
    [run] = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.5),
        (2, 0.9),
        (3, 0.7),
        (4, 0.8),
    ]
    # The best epoch scores the mean of the (up to) five centred on it: epochs 2-4 at epoch 4.
    assert run.data.metrics["best_epoch"] == 4
    assert run.data.metrics["best_val_acc"] == pytest.approx((0.9 + 0.7 + 0.8) / 3)
    assert run.info.run_name == "t03 adam 2x64"
    assert run.data.tags["trial_state"] == "completed" and run.info.status == "FINISHED"


class CutOnce:
    """A real client of the store whose `method` is cut once: the call reaches the store (done
    before the cut, as when the answer is lost with the connection) or not at all."""

    def __init__(self, client: MlflowClient, method: str, *, reached: bool) -> None:
        self.client, self.method, self.reached = client, method, reached
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        if name != self.method or self.cut:
            return call

        def cut(*args: Any, **kwargs: Any) -> Any:
            self.cut = True
            if self.reached:
                call(*args, **kwargs)
            raise MlflowException("connection reset by peer")

        return cut


@pytest.mark.parametrize(
    ("method", "reached"),
    [("create_run", True), ("log_batch", False), ("log_batch", True), ("log_inputs", False)],
)
def test_a_start_sent_again_after_a_cut_makes_one_complete_run(
    tmp_path: Path, method: str, reached: bool
) -> None:
    """The sender sends a trial's start again when a call of it failed for want of the store.
    Whichever call was cut, and whether it reached the store or not, the trial ends with one
    run holding its params and its data: never a second run, never a run without params."""
    _, client, experiment_id, parent = recorder_on(tmp_path)
    data = LoggedData(
        name="digits",
        source="sklearn:digits",
        fingerprint="abc123",
        rows=600,
        input_shape=(64,),
        context="training",
    )
    header = {"experiment_id": experiment_id, "parent_run_id": parent, "metric": "val_acc"}
    header |= {"mode": "max", "scores": list(SCORES), "data": dataclasses.asdict(data)}
    writer = TrialWriter(CutOnce(client, method, reached=reached), header)  # type: ignore[arg-type]
    start = {"op": "start", "trial": "t1", "name": "t01 adam", "params": {"lr": "0.01"}}
    start["marks"] = {"mlflow.parentRunId": parent, "trial_id": "t1"}
    with pytest.raises(MlflowException):
        writer.deliver(start)
    writer.deliver(start)
    runs = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    assert len(runs) == 1
    [run] = runs
    assert run.data.params == {"lr": "0.01"}
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == ["abc123"]


def test_the_writing_process_rides_out_a_graceful_stop_and_ends_with_its_driver(
    tmp_path: Path,
) -> None:
    """The signals that stop a sweep gracefully (Ctrl-C, SIGTERM to its process group) do not
    reach the writing process, in a session of its own: it sends until the driver says it is
    done. A driver gone without a word (its pipe closed) ends it at once, what it had not sent
    kept in the spool."""
    recorder, client, experiment_id, parent = recorder_on(tmp_path, OWN_PROCESS_FROM_TRIALS)
    recorder.start("t1", 1, {"optimizer": "adam"})
    sending = recorder._sender
    assert isinstance(sending, SenderProcess)
    assert os.getpgid(sending._process.pid) != os.getpgid(0)
    recorder.result("t1", epoch(1, 0.5))
    recorder.end("t1", "completed", None)
    recorder.close()
    assert sending._process.returncode == 0 and not recorder.errors
    [run] = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] == 0.5

    orphaned, *_ = recorder_on(tmp_path / "orphaned", OWN_PROCESS_FROM_TRIALS)
    orphaned.start("t1", 1, {"optimizer": "adam"})
    gone = orphaned._sender
    assert isinstance(gone, SenderProcess) and gone._process.stdin is not None
    gone._process.stdin.close()
    assert gone._process.wait(timeout=60) == 1
    assert [w["op"] for w in Spool(orphaned.spool_path).pending()] in (["start"], [])
