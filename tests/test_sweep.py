"""End to end: the real CLI runs smoke.yaml on a local Ray; the MLflow store is checked after."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import flatten_sample
from tests.conftest import SPACES, run_cli

pytestmark = pytest.mark.slow
SMOKE = yaml.safe_load((SPACES / "smoke.yaml").read_text())


@dataclass
class Sweep:
    folder: Path
    client: MlflowClient
    output: str
    parent: Any
    children: list[Any]  # one per trial
    retrains: list[Any]  # the last stage of `tune`


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    folder = tmp_path_factory.mktemp("sweep")
    done = run_cli(folder, "tune", "--space", str(SPACES / "smoke.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    children = [r for r in nested if "trial_id" in r.data.tags]
    retrains = [r for r in nested if r.info.run_name == "retrain"]
    assert len(nested) == len(children) + len(retrains)
    return Sweep(folder, client, done.stdout + done.stderr, parents[0], children, retrains)


def ray_trials(sweep: Sweep) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Ray's own record of each trial: its config and its reported results, by trial id."""
    sweep_path = Path(sweep.parent.data.tags["sweep_path"])
    trials = {}
    for params_file in sweep_path.glob("*/params.json"):
        results = [
            json.loads(line)
            for line in (params_file.parent / "result.json").read_text().splitlines()
        ]
        trials[results[0]["trial_id"]] = (json.loads(params_file.read_text()), results)
    return trials


def test_one_child_run_per_trial_nested_under_the_parent(sweep: Sweep) -> None:
    assert len(sweep.children) == SMOKE["budget"]["num_samples"]
    assert len({c.data.tags["trial_id"] for c in sweep.children}) == len(sweep.children)
    assert set(ray_trials(sweep)) == {c.data.tags["trial_id"] for c in sweep.children}


def test_child_params_are_exactly_the_sampled_hyperparameters(sweep: Sweep) -> None:
    trials = ray_trials(sweep)
    for child in sweep.children:
        config, _ = trials[child.data.tags["trial_id"]]
        expected = {k: str(v) for k, v in flatten_sample(config).items()}
        assert child.data.params == expected
        assert not {"pid", "timestamp", "hostname", "date"} & set(child.data.params)


def test_metric_history_has_one_point_per_epoch_reached(sweep: Sweep) -> None:
    trials = ray_trials(sweep)
    for child in sweep.children:
        _, results = trials[child.data.tags["trial_id"]]
        epochs = [r["epoch"] for r in results]
        for metric in ("train_loss", "val_loss", "val_acc"):
            history = sweep.client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == epochs
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
                [r[metric] for r in results]
            )
        assert set(child.data.metrics) == {"train_loss", "val_loss", "val_acc"}


def test_trial_states_are_tagged_and_asha_stopped_some(sweep: Sweep) -> None:
    max_epochs = SMOKE["budget"]["max_epochs"]
    states = {}
    for child in sweep.children:
        tags = child.data.tags
        state = tags["trial_state"]
        states[tags["trial_id"]] = state
        reached = len(sweep.client.get_metric_history(child.info.run_id, "val_acc"))
        assert state == ("completed" if reached == max_epochs else "stopped")
        assert tags["host"] and tags["device"] == "cpu"
        assert child.info.status == "FINISHED"
    assert "stopped" in states.values(), states
    assert "completed" in states.values(), states


def test_warm_start_point_is_the_first_trial(sweep: Sweep) -> None:
    point = SMOKE["search"]["points_to_evaluate"][0]
    sweep_path = Path(sweep.parent.data.tags["sweep_path"])
    first_dir = next(sweep_path.glob("run_trial_*_1_*"))  # Ray numbers trials from 1
    first_id = json.loads((first_dir / "result.json").read_text().splitlines()[0])["trial_id"]
    first = next(c for c in sweep.children if c.data.tags["trial_id"] == first_id)
    assert first.data.params == {k: str(v) for k, v in point.items()}
    # The runs carry Ray's numbering: 1 to num_samples, in the order the searcher suggested.
    numbers = sorted(int(c.data.tags["trial_number"]) for c in sweep.children)
    assert numbers == list(range(1, SMOKE["budget"]["num_samples"] + 1))
    assert first.data.tags["trial_number"] == "1"


def test_parent_run_records_the_sweep(sweep: Sweep) -> None:
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("smoke-")
    assert parent.data.params["seed"] == "7"
    assert parent.data.params["budget.num_samples"] == "8"
    assert parent.data.params["scheduler.name"] == "asha"
    assert len(parent.data.tags["data_fingerprint"]) == 16
    artifacts = {a.path for a in sweep.client.list_artifacts(parent.info.run_id)}
    assert {"search_space.yaml", "config.json", "trials.csv"} <= artifacts
    local = Path(
        sweep.client.download_artifacts(parent.info.run_id, "trials.csv", str(sweep.folder))
    )
    table = pd.read_csv(local)
    assert len(table) == len(sweep.children)
    best = table[table["state"].isin(["completed", "stopped"])]["val_acc"].max()
    assert parent.data.metrics["best_val_acc"] == pytest.approx(best)
    valid = table[table["state"].isin(["completed", "stopped"])]
    # Ties on val_acc go to the lower val_loss.
    best_row = valid.sort_values(["val_acc", "val_loss"], ascending=[False, True]).iloc[0]
    assert parent.data.params["best.trial_id"] == best_row["trial_id"]
    # Artifacts of the embedded store live under mlruns/, not in the working directory.
    assert (sweep.folder / "mlruns" / "artifacts").is_dir()


def test_the_best_record_is_the_best_epoch_of_the_trials_own_histories(sweep: Sweep) -> None:
    """Computed from Ray's result.json of each trial, not from trials.csv (which the same code
    writes): the best (trial, epoch) by val_acc, ties to the lower val_loss, among trials that
    completed or were stopped early."""
    states = {c.data.tags["trial_id"]: c.data.tags["trial_state"] for c in sweep.children}
    epochs = [
        (r["val_acc"], -r["val_loss"], trial_id, r["epoch"])
        for trial_id, (_, results) in ray_trials(sweep).items()
        if states[trial_id] in ("completed", "stopped")
        for r in results
    ]
    val_acc, minus_loss, trial_id, epoch = max(epochs)
    metrics, params = sweep.parent.data.metrics, sweep.parent.data.params
    assert params["best.trial_id"] == trial_id
    assert metrics["best_epoch"] == epoch
    assert metrics["best_val_acc"] == pytest.approx(val_acc)
    assert metrics["best_val_loss"] == pytest.approx(-minus_loss)


def test_tune_ends_by_retraining_the_best_trial_and_registering_it(sweep: Sweep) -> None:
    [retrain] = sweep.retrains
    assert retrain.info.status == "FINISHED"
    assert retrain.data.tags["source_trial_id"] == sweep.parent.data.params["best.trial_id"]
    assert retrain.data.params["epochs"] == str(int(sweep.parent.data.metrics["best_epoch"]))
    assert 0.5 < retrain.data.metrics["test_acc"] <= 1.0
    version = sweep.client.get_model_version_by_alias("smoke-digits-mlp", "challenger")
    assert version.run_id == retrain.info.run_id
    assert "registered smoke-digits-mlp version 1 as 'challenger'" in " ".join(sweep.output.split())


def test_summary_names_the_experiment_and_the_parent_run(sweep: Sweep) -> None:
    assert "experiment: smoke" in sweep.output
    assert sweep.parent.info.run_id in sweep.output
    assert "make ui" in sweep.output


def test_bad_space_fails_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPACES / "smoke.yaml").read_text().replace("num_samples: 8", "num_sample: 8"))
    done = run_cli(tmp_path, "tune", "--space", str(bad))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert (
        str(bad) in message and "num_sample" in message and "did you mean 'num_samples'" in message
    )
    assert not (tmp_path / "mlruns").exists()
