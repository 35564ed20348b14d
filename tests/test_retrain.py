"""Retrain on real digits and a real SQLite MLflow store: sweep lookup, test once, pt2 model.
The tests that open an MLflow store are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import DataConfig, Experiment, Hyperparameters, Scalar, load_experiment
from pipeline.core.data import Dataset, Split, refolded, tuning_data
from pipeline.core.decisions import Opinion, select
from pipeline.core.model import load_exported
from pipeline.core.networks import mlp
from pipeline.core.refit import second_opinion, train_and_test
from pipeline.core.train import fit
from pipeline.core.trials import TrialRow
from pipeline.errors import PipelineError
from pipeline.retrain import check_same_data, log_retrain
from pipeline.tracking.runs import LoggedData, finish_parent_run, start_parent_run
from pipeline.tracking.store import ensure_experiment
from pipeline.tracking.sweeps import SweepRecord, find_sweep
from tests.conftest import REPO, SPACES

CPU = torch.device("cpu")
GOOD = {"lr": 3e-3, "hidden_units": 64, "batch_size": 32, "optimizer": "adam"}

# A classification trial's scores, as `Experiment.trial_scores` names them.
SCORES = ("train_loss", "val_loss", "val_acc", "val_macro_f1", "val_auc")


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    return load_experiment(SPACES / "smoke.yaml", ["seed=0"])


def trial_row(
    trial_id: str, state: str, val_acc: float, val_loss: float, **params: Scalar
) -> TrialRow:
    return TrialRow(
        trial_id=trial_id,
        state=state,
        params=params,
        epoch=3,
        scores={"val_acc": val_acc, "val_loss": val_loss, "train_loss": 0.1},
    )


def record_sweep(
    client: MlflowClient,
    experiment: Experiment,
    rows: list[TrialRow],
    fingerprint: str,
    status: str = "FINISHED",
) -> str:
    """A sweep's parent run written by the same functions the sweep uses."""
    artifacts = Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    experiment_id = ensure_experiment(client, experiment.name, artifacts)
    tags = {"sweep_path": "/tmp/sweep", "data_fingerprint": fingerprint}
    data = LoggedData(
        name="digits",
        source="here",
        fingerprint=fingerprint,
        rows=2,
        input_shape=(3,),
        context="training",
    )
    run_id = start_parent_run(
        client,
        experiment_id,
        "sweep",
        experiment,
        space_text="name: x",
        marks=tags,
        params={},
        data=data.as_input(),
    )
    finish_parent_run(
        client, run_id, rows, best=None, status=status, scores=SCORES, metric="val_acc"
    )
    return run_id


@pytest.fixture()
def client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_find_sweep_takes_the_best_valid_trial_of_the_latest_finished_sweep(
    client: MlflowClient, experiment: Experiment, digits_split: Split
) -> None:
    fp = digits_split.fingerprint
    record_sweep(client, experiment, [trial_row("old", "completed", 0.99, 0.1, **GOOD)], fp)
    latest = record_sweep(
        client,
        experiment,
        [
            trial_row("diverged", "diverged", 0.995, 0.01, **GOOD),
            trial_row("errored", "errored", 0.99, 0.01, **GOOD),
            trial_row("tie-worse-loss", "stopped", 0.95, 0.30, **GOOD, momentum=0.9),
            trial_row("winner", "completed", 0.95, 0.20, **GOOD),
        ],
        fp,
    )
    record_sweep(client, experiment, [trial_row("x", "completed", 0.99, 0.1)], fp, "KILLED")
    sweep = find_sweep(client, experiment.name, None)
    assert sweep.parent_run_id == latest
    assert sweep.best.trial_id == "winner"
    # The candidates for a second opinion: the best valid trials, best first.
    assert [c.trial_id for c in sweep.candidates] == ["winner", "tie-worse-loss"]
    # Read back from trials.csv: the momentum the winner did not sample (an empty cell, NaN to
    # pandas) left out, integers integers again, numpy scalars unwrapped.
    assert sweep.best.params == GOOD
    assert [type(v) for v in sweep.best.params.values()] == [type(v) for v in GOOD.values()]
    assert sweep.epochs == 3
    assert sweep.experiment == experiment


def test_find_sweep_errors(client: MlflowClient, experiment: Experiment) -> None:
    with pytest.raises(PipelineError, match="no MLflow experiment 'smoke'"):
        find_sweep(client, "smoke", None)
    bad = record_sweep(client, experiment, [trial_row("d", "diverged", 0.0, 1e30, **GOOD)], "f")
    with pytest.raises(PipelineError, match=f"sweep {bad} has no trial that completed or stopped"):
        find_sweep(client, "smoke", None)
    killed = record_sweep(
        client, experiment, [trial_row("a", "completed", 0.9, 0.1)], "f", "KILLED"
    )
    with pytest.raises(PipelineError, match=f"sweep {killed} did not finish \\(KILLED\\)"):
        find_sweep(client, "smoke", killed)
    with pytest.raises(PipelineError, match="no run 'nope' in the tracking store"):
        find_sweep(client, "smoke", "nope")
    other = client.create_run(client.get_experiment_by_name("smoke").experiment_id).info.run_id
    with pytest.raises(PipelineError, match=f"run '{other}' is not a sweep of experiment"):
        find_sweep(client, "smoke", other)


def test_retrain_refuses_data_other_than_the_sweeps(
    client: MlflowClient, experiment: Experiment, digits_split: Split
) -> None:
    record_sweep(client, experiment, [trial_row("a", "completed", 0.9, 0.1, **GOOD)], "0123")
    with pytest.raises(PipelineError, match="the data differ from those of sweep"):
        check_same_data(find_sweep(client, "smoke", None), digits_split)


def test_train_and_test_learns_on_train_plus_validation(
    experiment: Experiment, digits: Dataset, digits_split: Split
) -> None:
    final = train_and_test(
        experiment, Hyperparameters.from_params(GOOD), digits, digits_split, epochs=6, device=CPU
    )
    assert len(final.train_losses) == 6 and final.train_losses[-1] < final.train_losses[0] / 3
    assert final.test_outputs.shape == (len(digits_split.test), 10)
    np.testing.assert_allclose(final.test_outputs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (final.test_outputs.argmax(1) == digits.labels[digits_split.test]).mean()
    assert accuracy > 0.93
    # The scaling statistics inside the model are those of train + validation, not of the test.
    buffers = dict(load_exported(final.program).named_buffers())
    mean = buffers["0.0.mean"].numpy()
    np.testing.assert_allclose(
        mean, digits.features[digits_split.tuning_rows].mean(axis=0), rtol=1e-5, atol=1e-5
    )


def test_a_diverging_retrain_is_an_error(
    experiment: Experiment, digits: Dataset, digits_split: Split
) -> None:
    hp = Hyperparameters(optimizer="sgd", lr=1e6, batch_size=32)
    with pytest.raises(PipelineError, match=r"the retrain diverged at epoch .* nothing registered"):
        train_and_test(experiment, hp, digits, digits_split, epochs=10, device=CPU)


def test_logged_model_loads_pickle_free_in_a_fresh_process_and_predicts_the_same(
    tmp_path: Path,
    client: MlflowClient,
    experiment: Experiment,
    digits: Dataset,
    digits_split: Split,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    row = trial_row("winner", "completed", 0.95, 0.2, **GOOD)
    record_sweep(client, experiment, [row], digits_split.fingerprint)
    sweep: SweepRecord = find_sweep(client, "smoke", None)
    final = train_and_test(
        experiment, Hyperparameters.from_params(GOOD), digits, digits_split, epochs=3, device=CPU
    )
    selection = select(
        [Opinion("runner-up", 5, 0.96, 0.93), Opinion("winner", 3, 0.95, 0.94)], "val_acc", "max"
    )
    source = "sklearn.datasets.load_digits"
    record = log_retrain(
        uri, sweep, final, dataset=digits, split=digits_split, source=source, selection=selection
    )

    run = client.get_run(record.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == sweep.parent_run_id
    assert run.data.tags["mlflow.runName"] == "retrain"
    assert run.data.metrics["test_acc"] == pytest.approx(record.report.value)
    assert "test_macro_f1" in run.data.metrics and run.data.params["epochs"] == "3"
    assert len(client.get_metric_history(record.run_id, "train_loss")) == 3
    artifacts = {a.path for a in client.list_artifacts(record.run_id)}
    assert {"confusion_matrix.png", "classification_report.json", "selection.json"} <= artifacts
    assert run.data.metrics["selection_val_acc"] == 0.94
    assert run.data.metrics["trial_val_acc"] == 0.95
    low, high = record.report.interval
    assert run.data.metrics["test_acc_low"] == low < record.report.value
    assert run.data.metrics["test_acc_high"] == high > record.report.value
    chosen = client.download_artifacts(record.run_id, "selection.json", str(tmp_path))
    recorded = json.loads(Path(chosen).read_text())
    assert recorded["chosen"] == "winner" and recorded["selection_val_acc"] == 0.94
    assert [c["trial_id"] for c in recorded["candidates"]] == ["winner", "runner-up"]
    assert recorded["candidates"][1]["sweep_val_acc"] == 0.96

    rows = digits.features[digits_split.test]
    rows_file, out_file = str(tmp_path / "rows.npy"), str(tmp_path / "out.npy")
    np.save(rows_file, rows)
    script = (
        "import sys, json, mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"model = mlflow.pyfunc.load_model({record.model_uri!r})\n"
        f"np.save({out_file!r}, model.predict(np.load({rows_file!r})))\n"
        "print(json.dumps(model.metadata.metadata))\n"
    )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads(done.stdout.strip().splitlines()[-1])
    assert metadata["class_names"] == list(digits.class_names)
    assert metadata["feature_names"] == list(digits.columns)
    assert metadata["data_fingerprint"] == digits_split.fingerprint
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"),
        load_exported(final.program)(torch.from_numpy(rows)).detach().numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), final.test_outputs, atol=1e-6)
    saved = {
        p.name for p in (tmp_path / "artifacts").rglob("*") if p.suffix in (".pt2", ".pkl", ".pth")
    }
    assert saved == {"model.pt2"}


def test_refolded_data_are_the_tuning_rows_in_other_folds_of_the_same_sizes(
    digits: Dataset, digits_split: Split
) -> None:
    five = DataConfig(source="digits", cv_folds=5)
    fresh = refolded(digits, digits_split, five, seed=1)
    np.testing.assert_array_equal(
        fresh.features, tuning_data(digits, digits_split, shared_scale=True).features
    )
    assert len(fresh.folds) == 5  # and never a test row: the rows are the tuning rows
    rows = len(digits_split.tuning_rows)
    for train, val in fresh.folds:
        assert len(val) == pytest.approx(rows / 5, abs=1) and not set(train) & set(val)
    assert sorted(np.concatenate([v for _, v in fresh.folds])) == list(range(rows))
    again = refolded(digits, digits_split, five, seed=2)
    assert not np.array_equal(fresh.folds[0][1], again.folds[0][1])  # the seed draws them
    # One validation split: the sweep chose on its validation rows, so the second opinion is
    # cross-validated on its training rows alone (positions 0 .. len(train)-1 of the rows).
    single = refolded(digits, digits_split, DataConfig(source="digits"), seed=1).folds
    trained = len(digits_split.train)
    assert len(single) == 3
    assert sorted(np.concatenate([v for _, v in single])) == list(range(trained))
    assert all(max(train.max(), val.max()) < trained for train, val in single)


def test_a_second_opinion_scores_as_the_sweep_does_on_fresh_folds(
    experiment: Experiment, digits: Dataset, digits_split: Split
) -> None:
    """Epoch 2's score: the mean of epochs 1-4 (the window centred on it, cut by the space's
    max_epochs, 4) of the same training on the fresh folds from the experiment's seed + 1; a
    diverging configuration scores the worst."""
    data = refolded(digits, digits_split, DataConfig(source="digits", cv_folds=3), seed=7)
    score = second_opinion(
        experiment, Hyperparameters.from_params(GOOD), data, epochs=2, device=CPU
    )
    history: list[float] = []
    fit(
        mlp,
        Hyperparameters.from_params(GOOD),
        data,
        max_epochs=4,
        report=lambda m, _: history.append(m.scores["val_acc"]),
        device=CPU,
        seed=experiment.seed + 1,
    )
    assert len(history) == 4 and score == pytest.approx(np.mean(history))
    assert score > 0.85
    wild = Hyperparameters(optimizer="sgd", lr=1e6, batch_size=32)
    assert second_opinion(experiment, wild, data, epochs=2, device=CPU) == 0.0  # worst accuracy
