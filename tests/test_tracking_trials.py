"""The trial recorder on a real SQLite MLflow store, fed trial events as Tune's callback hands
them over (no Ray needed to produce them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import LoggedData
from pipeline.tracking.store import open_client
from pipeline.tracking.trials import TrialRecorder, TrialWriter

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


def recorder_on(tmp_path: Path) -> tuple[TrialRecorder, MlflowClient, str, str]:
    """A recorder on a new store, for one sweep's parent run: it, the store's client, the
    experiment and the parent run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client: MlflowClient = open_client(uri)
    experiment_id = client.create_experiment("trials")
    parent = client.create_run(experiment_id).info.run_id
    recorder = TrialRecorder(
        uri,
        experiment_id,
        parent,
        metric="val_acc",
        mode="max",
        scores=SCORES,
        spool_dir=tmp_path / "spool",
        outage_timeout=60,
        flush_seconds=0,
    )
    return recorder, client, experiment_id, parent


def test_a_trials_best_is_its_best_smoothed_epoch_not_its_last_nor_its_peak(
    tmp_path: Path,
) -> None:
    """Each epoch is scored as the mean of the (up to) five centred on it: here epoch 2's
    (epochs 1-4), 0.7375, beats epoch 3's single-epoch peak of 0.95 (its mean 0.69) and the
    last epoch's 0.3 (its mean 0.4). The trial's run and what it tells the UI say epoch 2."""
    recorder, client, experiment_id, parent = recorder_on(tmp_path)
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
