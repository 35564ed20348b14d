"""End to end: the real CLI runs smoke.yaml on a local Ray (the run's shared smoke store: tune,
then a listing of its sweeps, then promote); the MLflow store is checked after."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import flatten_sample
from tests.conftest import (
    REPO,
    SPACES,
    SmokeStore,
    one_worker,
    run_cli,
    run_in_process,
    run_reporting,
)

pytestmark = [pytest.mark.slow, one_worker("sweep")]
SMOKE = yaml.safe_load((SPACES / "smoke.yaml").read_text())
MODEL = SMOKE["registered_model"]
PICTURES = {"history.png", "parallel.png", "importance.png", "curves.png", "states.png"}


@dataclass
class Sweep:
    folder: Path
    client: MlflowClient
    output: str
    parent: Any
    children: list[Any]  # one per trial
    retrains: list[Any]  # the last stage of `tune`


@pytest.fixture(scope="module")
def sweep(smoke_store: SmokeStore) -> Sweep:
    folder = smoke_store.folder
    client = MlflowClient(smoke_store.tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    children = [r for r in nested if "trial_id" in r.data.tags]
    retrains = [r for r in nested if r.info.run_name == "retrain"]
    assert len(nested) == len(children) + len(retrains)
    return Sweep(folder, client, smoke_store.output("tune"), parents[0], children, retrains)


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
        scores = ("train_loss", "val_loss", "val_acc", "val_macro_f1", "val_auc")
        for metric in scores:
            history = sweep.client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == epochs
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
                [r[metric] for r in results]
            )
        summary = {f"best_{name}" for name in scores[1:]} | {"best_epoch"}
        assert set(child.data.metrics) == set(scores) | summary


def test_trials_shorter_than_the_checkpoint_interval_write_no_checkpoint(sweep: Sweep) -> None:
    """smoke.yaml's trials take about a second, under the default budget.checkpoint_seconds."""
    sweep_path = Path(sweep.parent.data.tags["sweep_path"])
    assert list(sweep_path.glob("*/result.json")), "Ray's trial folders are there"
    assert not list(sweep_path.glob("*/checkpoint_*"))


def smoothed_best(results: list[dict[str, Any]]) -> tuple[float, float, int]:
    """A trial's best epoch as the README defines it, from Ray's results: val_acc and val_loss
    averaged over the five epochs centred on each epoch (fewer at the ends), the best average,
    the earliest of equals."""
    results = sorted(results, key=lambda r: r["epoch"])
    scored = []
    for i, r in enumerate(results):
        window = results[max(0, i - 2) : i + 3]
        acc = sum(w["val_acc"] for w in window) / len(window)
        loss = sum(w["val_loss"] for w in window) / len(window)
        scored.append((round(acc, 12), -r["epoch"], loss))
    acc, minus_epoch, loss = max(scored)
    return acc, loss, -minus_epoch


def test_trial_runs_carry_their_best_epoch_and_sorting_on_it_ranks_the_winner_first(
    sweep: Sweep,
) -> None:
    """Each trial run's best_* metrics are its best epoch in Ray's own record (scored on five
    epochs, the earliest of equal scores), so the UI's sort on best_val_acc (ties: lower
    best_val_loss) ranks the sweep's best trial first, though its last epoch may score lower."""
    trials = ray_trials(sweep)
    for child in sweep.children:
        _, results = trials[child.data.tags["trial_id"]]
        acc, loss, epoch = smoothed_best(results)
        metrics = child.data.metrics
        assert metrics["best_epoch"] == epoch
        assert metrics["best_val_acc"] == pytest.approx(acc)
        assert metrics["best_val_loss"] == pytest.approx(loss)
        # Every epoch told the searcher the trial's best so far by the same rule; the last, its
        # best, whatever its last epoch scored.
        ordered = sorted(results, key=lambda r: r["epoch"])
        for i, result in enumerate(ordered):
            so_far = smoothed_best(ordered[: i + 1])[0]
            assert result["best_val_acc"] == pytest.approx(so_far, abs=1e-9)
        assert ordered[-1]["best_val_acc"] == pytest.approx(acc)
    ranked = sweep.client.search_runs(
        [sweep.parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent.info.run_id}'",
        order_by=["metrics.best_val_acc DESC", "metrics.best_val_loss ASC"],
    )
    assert ranked[0].data.tags["trial_id"] == sweep.parent.data.params["sweep_best.trial_id"]


def test_trial_runs_have_readable_names_and_keep_the_trial_id_as_a_tag(sweep: Sweep) -> None:
    for child in sweep.children:
        tags, params = child.data.tags, child.data.params
        lr = float(params["lr"])
        expected = (
            f"t{int(tags['trial_number']):02d} {params['optimizer']} "
            f"{params['hidden_layers']}x{params['hidden_units']} lr={lr:.1e}"
        )
        assert child.info.run_name == expected
        assert len(tags["trial_id"]) == 8


def test_integers_stay_integers_in_every_record(sweep: Sweep) -> None:
    params = sweep.parent.data.params
    for name in ("batch_size", "hidden_layers", "hidden_units"):
        assert params[f"best.{name}"].isdigit(), (name, params[f"best.{name}"])
        assert sweep.retrains[0].data.params[name].isdigit()
    local = sweep.client.download_artifacts(
        sweep.parent.info.run_id, "trials.csv", str(sweep.folder)
    )
    header, *rows = Path(local).read_text().splitlines()
    column = header.split(",").index("batch_size")
    assert all(row.split(",")[column].isdigit() for row in rows)


def test_experiment_opens_on_its_runs_with_a_description_and_datasets(sweep: Sweep) -> None:
    experiment = sweep.client.get_experiment(sweep.parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "best_val_acc" in experiment.tags["mlflow.note.content"]
    fingerprint = sweep.parent.data.tags["data_fingerprint"]
    for run in [sweep.parent, *sweep.children]:
        [logged] = run.inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("digits", fingerprint)
        assert [t.value for t in logged.tags] == ["training"]
    contexts = {
        (d.dataset.name, t.value) for d in sweep.retrains[0].inputs.dataset_inputs for t in d.tags
    }
    assert contexts == {("digits", "training"), ("digits-test", "testing")}


def test_progress_replaces_rays_output(sweep: Sweep) -> None:
    """One line per ended trial with its best and last epoch, a final status line, and none of
    Ray's configuration box, TensorBoard hint or token notice."""
    output = " ".join(sweep.output.split())
    total = SMOKE["budget"]["num_samples"]
    assert f"trials {total}/{total} ended" in output
    # Each trial by the number a person reads everywhere (t03), not Ray's id.
    ended = re.findall(r"\bt(\d\d) (?:completed|stopped): best val_acc", output)
    assert sorted(int(n) for n in ended) == list(range(1, total + 1))
    for chatter in ("Configuration for experiment", "TensorBoard", "Token authentication"):
        assert chatter not in output


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
    table = pd.read_csv(local, dtype={"trial_id": str})
    assert len(table) == len(sweep.children)
    # What a person reads first: the number, the run's name, the state, the score, its epoch.
    head = ["number", "name", "state", "val_acc", "epoch", "trial_id"]
    assert list(table.columns[: len(head)]) == head
    assert list(table["number"]) == list(range(1, len(table) + 1))
    names = {c.data.tags["trial_id"]: c.info.run_name for c in sweep.children}
    assert list(table["name"]) == [names[t] for t in table["trial_id"]]
    best = table[table["state"].isin(["completed", "stopped"])]["val_acc"].max()
    # The sweep's figures are params: the parent run does not compete with its trials' metrics.
    assert parent.data.metrics == {}
    assert float(parent.data.params["sweep_best.val_acc"]) == pytest.approx(best)
    valid = table[table["state"].isin(["completed", "stopped"])]
    # Ties on val_acc go to the lower val_loss.
    best_row = valid.sort_values(["val_acc", "val_loss"], ascending=[False, True]).iloc[0]
    assert parent.data.params["sweep_best.trial_id"] == best_row["trial_id"]
    assert parent.data.params["sweep_best.name"] == best_row["name"]
    # Artifacts of the embedded store live under mlruns/, not in the working directory.
    assert (sweep.folder / "mlruns" / "artifacts").is_dir()
    # The code's commit is the checkout's the package runs from, not the working directory's
    # (the sweep ran in a folder outside any git checkout).
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    assert parent.data.tags["mlflow.source.git.commit"] == head.stdout.decode().strip()


def test_the_best_record_is_the_best_epoch_of_the_trials_own_histories(sweep: Sweep) -> None:
    """Computed from Ray's result.json of each trial, not from trials.csv (which the same code
    writes): the best (trial, epoch) by val_acc averaged over the five epochs centred on it
    (fewer at the ends), ties to the lower val_loss so averaged, among trials that completed or
    were stopped early."""
    states = {c.data.tags["trial_id"]: c.data.tags["trial_state"] for c in sweep.children}
    trials = []
    for trial_id, (_, results) in ray_trials(sweep).items():
        if states[trial_id] in ("completed", "stopped"):
            acc, loss, epoch = smoothed_best(results)
            trials.append((acc, -loss, epoch, trial_id))
    val_acc, minus_loss, epoch, trial_id = max(trials)  # ties to the lower loss
    params = sweep.parent.data.params
    assert params["sweep_best.trial_id"] == trial_id
    assert params["sweep_best.epoch"] == str(epoch)
    assert float(params["sweep_best.val_acc"]) == pytest.approx(val_acc)
    assert float(params["sweep_best.val_loss"]) == pytest.approx(-minus_loss)


def test_tune_ends_by_retraining_the_best_trial_and_registering_it(
    sweep: Sweep, smoke_store: SmokeStore
) -> None:
    [retrain] = sweep.retrains
    assert retrain.info.status == "FINISHED"
    # The sweep's three best trials got a second opinion; the best of those was retrained for
    # its own best epoch, and its second opinion is the selection score.
    folder = sweep.client.download_artifacts(
        retrain.info.run_id, "selection.json", str(sweep.folder)
    )
    selection = json.loads(Path(folder).read_text())
    trials = {c.data.tags["trial_id"]: c for c in sweep.children}
    valid = [t for t in trials.values() if t.data.tags["trial_state"] in ("completed", "stopped")]
    ranked = sorted(
        valid, key=lambda t: (-t.data.metrics["best_val_acc"], t.data.metrics["best_val_loss"])
    )
    candidates = selection["candidates"]
    assert {c["trial_id"] for c in candidates} == {t.data.tags["trial_id"] for t in ranked[:3]}
    assert ranked[0].data.tags["trial_id"] == sweep.parent.data.params["sweep_best.trial_id"]
    # Listed best second opinion first, each with its place in the sweep's own ranking.
    assert sorted(c["sweep_rank"] for c in candidates) == [1, 2, 3]
    leader = next(c for c in candidates if c["sweep_rank"] == 1)
    assert leader["trial_id"] == ranked[0].data.tags["trial_id"]
    opinions = [c["second_opinion_val_acc"] for c in candidates]
    assert opinions[0] == max(opinions) and 0.5 < opinions[0] <= 1.0
    chosen = trials[selection["chosen"]]
    assert candidates[0]["trial_id"] == selection["chosen"]
    assert candidates[0]["sweep_val_acc"] == pytest.approx(chosen.data.metrics["best_val_acc"])
    assert retrain.data.tags["source_trial_id"] == selection["chosen"]
    assert retrain.data.params["epochs"] == str(int(chosen.data.metrics["best_epoch"]))
    assert retrain.data.metrics["selection_val_acc"] == pytest.approx(opinions[0])
    assert retrain.data.metrics["trial_val_acc"] == pytest.approx(candidates[0]["sweep_val_acc"])
    assert 0.5 < retrain.data.metrics["test_acc"] <= 1.0
    low, high = retrain.data.metrics["test_acc_low"], retrain.data.metrics["test_acc_high"]
    assert low < retrain.data.metrics["test_acc"] < high
    version = sweep.client.get_model_version("smoke-digits-mlp", "1")
    assert version.run_id == retrain.info.run_id
    output = " ".join(sweep.output.split())
    # On the local Ray the sweep started, before it stops; the report's pictures are drawn
    # here while the winner is refit there (the log's lines, in order).
    said = [
        "second opinions on the sweep's best 3 trials, side by side as Ray tasks",
        f"retraining {chosen.info.run_name} on ",
        " epochs, as a Ray task",
        "drawing the report's pictures while the winner is retrained",
    ]
    places = [output.find(line) for line in said]
    assert -1 not in places and places == sorted(places), places
    assert "registered smoke-digits-mlp version 1 as 'challenger'" in output
    assert "registered smoke-digits-mlp version 1 as 'challenger'" in output
    # One winner: the parent run, the version and the output name the registered trial, by its
    # run's name, and say why it was chosen.
    parent = sweep.client.get_run(sweep.parent.info.run_id).data
    assert parent.params["best.trial_id"] == selection["chosen"]
    assert parent.params["best.name"] == chosen.info.run_name
    assert candidates[0]["trial"] == chosen.info.run_name.split()[0]  # t03
    assert float(parent.params["best.selection_val_acc"]) == pytest.approx(opinions[0])
    assert parent.params["best.lr"] == chosen.data.params["lr"]
    assert parent.tags["selection.reason"] == selection["reason"]
    assert f"winner: {selection['reason']}" in output
    assert f"retrained {chosen.info.run_name}: test_acc" in output
    assert version.tags["trial_number"] == chosen.data.tags["trial_number"]
    assert (
        chosen.info.run_name in version.description and selection["reason"] in version.description
    )
    # Links a person can follow: version -> retrain run -> trial run -> version.
    assert retrain.data.tags["source_trial"] == chosen.info.run_name
    assert retrain.data.tags["source_trial_run_id"] == chosen.info.run_id
    assert f"runs/{chosen.info.run_id})" in retrain.data.tags["mlflow.note.content"]
    became = sweep.client.get_run(chosen.info.run_id).data.tags
    assert became["registered_as"] == "smoke-digits-mlp/1"
    assert "(#/models/smoke-digits-mlp/versions/1)" in became["mlflow.note.content"]
    # After the sweep, the version was the challenger; the store's promotion made it champion.
    assert smoke_store.registry["tune"]["aliases"] == {"challenger": "1"}
    assert smoke_store.registry["promote"]["aliases"] == {"champion": "1"}


def test_tune_ends_with_where_its_time_went(sweep: Sweep) -> None:
    [line] = [x for x in sweep.output.splitlines() if x.startswith("timings:")]
    phases = dict(re.findall(r"([a-z][a-z ]*) (\d+\.\d) s", line.removeprefix("timings: ")))
    expected = ["imports", "config and data", "imports during ray start", "ray start"]
    expected += ["tracking", "sweep", "sweep records"]
    expected += ["second opinions", "retrain", "model logging", "registration", "report"]
    expected += ["ray stop"]
    assert list(phases) == [*expected, "total"], line
    total = float(phases.pop("total"))
    assert abs(sum(float(s) for s in phases.values()) - total) <= 0.1 * len(phases), line
    assert float(phases["sweep"]) > 0


def test_summary_names_the_experiment_and_the_parent_run(sweep: Sweep) -> None:
    assert "experiment: smoke" in sweep.output
    assert sweep.parent.info.run_id in sweep.output
    assert "make ui" in sweep.output


# --- the report and the list of sweeps, on the same store (the promotion comes last) ---


def test_report_writes_a_self_contained_page_and_logs_it_to_the_parent_run(sweep: Sweep) -> None:
    output = sweep.folder / "out" / "report.html"
    by_tune = sweep.client.download_artifacts(
        sweep.parent.info.run_id, "report/report.html", str(sweep.folder / "by-tune")
    )
    drawn_by_tune = Path(by_tune).read_text()
    loaded, done = run_reporting(
        sweep.folder, "report", "--experiment", "smoke", "--output", str(output)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray" not in loaded and "torch" not in loaded
    assert sweep.parent.info.run_id in done.stdout and str(output) in done.stdout
    page = output.read_text()
    assert f"Sweep report: {sweep.parent.info.run_name}" in page
    assert f"{SMOKE['budget']['num_samples']} (" in page  # the trial count and its states
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert f"{MODEL} version 1" in page  # tune registered it before the report was drawn
    # The report's winner is the registered trial, by its run's name.
    [retrain] = sweep.retrains
    registered = retrain.data.tags["source_trial"]
    assert f"<th>winner (registered)</th><td>{registered}: {MODEL} version 1</td>" in page
    listed = sweep.client.list_artifacts(sweep.parent.info.run_id, "report")
    logged = {a.path.removeprefix("report/") for a in listed}
    # Every picture, but importance where too few trials trained to fit a forest: then the page
    # says so, and what the trials that did not train had in common.
    drawn = PICTURES if "importance.png" in logged else PICTURES - {"importance.png"}
    assert logged == {"report.html", *drawn}
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(drawn)
    if "importance.png" not in logged:
        assert "trial(s) trained, at least 4 are needed" in page and "What they share" in page
    copy = sweep.client.download_artifacts(
        sweep.parent.info.run_id, "report/report.html", str(output.parent)
    )
    # The logged page is the one written here (the importance forest is seeded), and the one
    # tune drew while the winner was retrained, and finished once it was registered.
    assert Path(copy).read_text() == page == drawn_by_tune


def test_report_of_a_named_sweep(sweep: Sweep) -> None:
    done = run_cli(
        sweep.folder, "report", "--experiment", "smoke", "--parent-run", sweep.parent.info.run_id
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report/" in done.stdout or "report:" in done.stdout


def sweeps_json(listing: str) -> list[dict[str, object]]:
    records = json.loads(listing)
    assert isinstance(records, list)
    return records


def test_sweeps_lists_the_sweep_its_version_and_then_the_promotion(
    sweep: Sweep, smoke_store: SmokeStore
) -> None:
    """The smoke store listed its sweeps between the sweep and the promotion (stdout holds the
    JSON: the CLI's log lines go to stderr); the promotion then shows in a listing now."""
    (record,) = sweeps_json(smoke_store.printed["sweeps"][0])
    parent = sweep.client.get_run(sweep.parent.info.run_id)
    assert record["parent_run_id"] == sweep.parent.info.run_id
    assert record["run_name"] == sweep.parent.info.run_name
    assert record["status"] == "FINISHED"
    assert record["trials"] == SMOKE["budget"]["num_samples"]
    assert record["metric"] == "val_acc"
    assert record["best_score"] == pytest.approx(float(parent.data.params["best.val_acc"]))
    assert record["best_trial_id"] == parent.data.params["best.trial_id"]
    assert record["best_trial"] == parent.data.params["best.name"]
    params = record["params"]
    assert isinstance(params, dict)
    assert params["optimizer"] in ("adam", "momentum") and isinstance(params["lr"], float)
    assert (record["model"], record["version"]) == (MODEL, "1")
    assert (record["aliases"], record["decision"]) == (["challenger"], None)

    done = run_cli(sweep.folder, "sweeps", "--experiment", "smoke", "--format", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = sweeps_json(done.stdout)
    assert (record["aliases"], record["decision"]) == (["champion"], "promoted")

    done = run_cli(sweep.folder, "sweeps", "--experiment", "smoke", "--format", "csv")
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = csv.DictReader(io.StringIO(done.stdout))
    assert list(row) == list(record)  # the same stable keys, in the same order
    assert row["trials"] == str(SMOKE["budget"]["num_samples"])
    assert (row["version"], row["aliases"], row["decision"]) == ("1", "champion", "promoted")
    assert f"optimizer={params['optimizer']}" in row["params"]

    loaded, done = run_reporting(sweep.folder, "sweeps", "--experiment", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray" not in loaded and "torch" not in loaded
    score = f"{record['best_score']:.4f}"
    for shown in (sweep.parent.info.run_name, "FINISHED", score, "v1", "promoted"):
        assert shown in done.stdout


@pytest.mark.parametrize("command", ["sweeps", "report"])
def test_an_unknown_experiment_is_one_line_and_exit_1(sweep: Sweep, command: str) -> None:
    done = run_in_process(sweep.folder, command, "--experiment", "absent")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no MLflow experiment 'absent'; run a sweep first"
    assert done.stdout == ""


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
