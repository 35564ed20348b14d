"""The registry cycle through the real CLI on smoke.yaml: tune, retrain, register, promote, refuse,
roll back, predict and serve, with every alias and tag read back from the MLflow store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    SPACES,
    answers,
    background,
    cli_env,
    free_port,
    one_worker,
    registry_state,
    run_cli,
    run_in_process,
    run_reporting,
    wait_until,
)

pytestmark = [pytest.mark.slow, one_worker("registry")]
MODEL = "smoke-digits-mlp"
SMOKE = str(SPACES / "smoke.yaml")
# Overrides that make a sweep's winner predictably weak or strong (same data as smoke.yaml).
ONE_EPOCH = ["--set", "budget.max_epochs=1"]
SINGLE_CONFIG = [
    "--set",
    "budget.num_samples=2",
    "--set",
    "search.algorithm=random",
    "--set",
    "search.points_to_evaluate=[]",
    "--set",
    "scheduler.name=fifo",
]
WEAK = [*ONE_EPOCH, *SINGLE_CONFIG, "--set", "params.lr=0.0003"]
STRONG = [
    *SINGLE_CONFIG,
    "--set",
    "budget.max_epochs=30",
    "--set",
    "params.lr=0.01",
    "--set",
    "params.hidden_units=64",
    "--set",
    "params.optimizer={type: choice, values: [{name: adam, batch_size: 32}]}",
]


def ok(cwd: Path, *args: str) -> str:
    done = run_cli(cwd, *args)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@dataclass
class Cycle:
    folder: Path
    client: MlflowClient
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def step(self, name: str, *args: str) -> None:
        """A command, and the registry after it: a sweep in a process of its own, as a user
        runs it; the registry's commands in this one (their process: test_cli.py, and
        `test_commands_on_real_models_load_torch_but_never_ray` below)."""
        if args[0] == "tune":
            self.outputs[name] = ok(self.folder, *args)
        else:
            done = run_in_process(self.folder, *args)
            self.outputs[name] = done.stdout + done.stderr
            assert done.returncode == 0, f"{args}: {self.outputs[name][-3000:]}"
        self.states[name] = registry_state(self.client, MODEL)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory: pytest.TempPathFactory) -> Cycle:
    folder = tmp_path_factory.mktemp("registry")
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    cycle = Cycle(folder, client)
    cycle.step("tune", "tune", "--space", SMOKE, *ONE_EPOCH)
    cycle.step("promote-first", "promote", "--model", MODEL)
    cycle.step("tune-weak", "tune", "--space", SMOKE, *WEAK)
    cycle.step("promote-weak", "promote", "--model", MODEL)
    cycle.step("tune-strong", "tune", "--space", SMOKE, *STRONG)
    cycle.step("promote-strong", "promote", "--model", MODEL)
    cycle.step("promote-nothing", "promote", "--model", MODEL)
    cycle.step("rollback", "rollback", "--model", MODEL)
    cycle.step("force", "promote", "--model", MODEL, "--version", "2", "--force")
    cycle.step("rollback-force", "rollback", "--model", MODEL)
    return cycle


def tags_of(cycle: Cycle, step: str, version: str) -> dict[str, str]:
    return dict(cycle.states[step]["versions"][version])


def test_tune_registers_version_1_as_challenger_with_its_provenance(cycle: Cycle) -> None:
    state = cycle.states["tune"]
    assert state["aliases"] == {"challenger": "1"}
    tags = tags_of(cycle, "tune", "1")
    parent = cycle.client.get_run(tags["parent_run_id"])
    assert "sweep_path" in parent.data.tags and parent.info.status == "FINISHED"
    assert tags["data_fingerprint"] == parent.data.tags["data_fingerprint"]
    retrain = cycle.client.get_run(tags["retrain_run_id"])
    assert retrain.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert retrain.data.tags["source_trial_id"] == tags["trial_id"]
    assert float(tags["test_acc"]) == pytest.approx(retrain.data.metrics["test_acc"], abs=1e-6)
    assert float(tags["test_loss"]) == pytest.approx(retrain.data.metrics["test_loss"], abs=1e-6)
    low, high = retrain.data.metrics["test_acc_low"], retrain.data.metrics["test_acc_high"]
    assert tags["test_acc_95"] == f"[{low:.4f}, {high:.4f}]"
    selection = float(tags["selection_val_acc"])
    assert selection == pytest.approx(retrain.data.metrics["selection_val_acc"], abs=1e-6)
    assert tags["epochs"] == "1"
    version = cycle.client.get_model_version(MODEL, "1")
    assert version.run_id == retrain.info.run_id
    # The descriptions name the experiment and the sweep, not Ray's folder.
    experiment = cycle.client.get_experiment(parent.info.experiment_id).name
    model = cycle.client.get_registered_model(MODEL)
    assert f"experiment '{experiment}'" in model.description
    # ... and the trial by its run's name, each a link to its run's page.
    trial = cycle.client.get_run(retrain.data.tags["source_trial_run_id"])
    assert trial.data.tags["trial_id"] == tags["trial_id"]
    assert trial.data.tags["trial_number"] == tags["trial_number"]
    link = f"[{trial.info.run_name}](#/experiments/{parent.info.experiment_id}/runs/"
    assert f"Trial {link}{trial.info.run_id}) of sweep [{parent.info.run_name}]" in (
        version.description
    )


def test_first_promotion_makes_the_challenger_champion(cycle: Cycle) -> None:
    assert cycle.states["promote-first"]["aliases"] == {"champion": "1"}
    tags = tags_of(cycle, "promote-first", "1")
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_before"] == "none"
    assert tags["promotion.reason"] == "no champion yet"
    assert "@" in tags["promotion.by"] and tags["promotion.at"].startswith("20")
    # Re-scored on the test split at promotion time: the same model gives the same accuracy.
    assert float(tags["promotion.candidate_test_acc"]) == pytest.approx(float(tags["test_acc"]))
    assert "version 1 is now champion" in cycle.outputs["promote-first"]


def test_a_weaker_challenger_is_refused(cycle: Cycle) -> None:
    assert cycle.states["tune-weak"]["aliases"] == {"champion": "1", "challenger": "2"}
    assert cycle.states["promote-weak"]["aliases"] == {"champion": "1", "challenger": "2"}
    tags = tags_of(cycle, "promote-weak", "2")
    assert tags["promotion.decision"] == "kept"
    assert tags["promotion.champion_before"] == "1"
    challenger_acc = float(tags["promotion.candidate_test_acc"])
    champion_acc = float(tags["promotion.champion_test_acc"])
    assert challenger_acc < champion_acc
    assert champion_acc == pytest.approx(float(tags_of(cycle, "tune", "1")["test_acc"]))
    assert "version 2 NOT promoted" in cycle.outputs["promote-weak"]
    # Whether the difference is beyond chance, from the rows only one of them gets right.
    assert re.search(r"(inside|beyond) the noise: \d+ test rows right only by the candidate, "
                     r"\d+ only by the champion \(McNemar p = [01]\.\d\d\)",
                     tags["promotion.reason"])  # fmt: skip


def test_a_stronger_challenger_is_promoted_and_the_old_champion_kept_as_previous(
    cycle: Cycle,
) -> None:
    assert cycle.states["tune-strong"]["aliases"] == {"champion": "1", "challenger": "3"}
    # The promoted version drops `challenger`: it is the champion now.
    assert cycle.states["promote-strong"]["aliases"] == {"champion": "3", "previous-champion": "1"}
    tags = tags_of(cycle, "promote-strong", "3")
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_before"] == "1"
    assert float(tags["promotion.candidate_test_acc"]) > float(tags["promotion.champion_test_acc"])


def test_rollback_restores_the_previous_champion(cycle: Cycle) -> None:
    assert cycle.states["rollback"]["aliases"] == {"champion": "1", "previous-champion": "3"}
    tags = tags_of(cycle, "rollback", "1")
    assert tags["rollback.decision"] == "rolled back"
    assert tags["rollback.champion_before"] == "3"
    assert "version 1 is now champion" in cycle.outputs["rollback"]


def test_a_chosen_version_can_be_forced_in_and_rolled_back(cycle: Cycle) -> None:
    # Version 2 lost to version 1 on the test split; --force skips the comparison.
    assert cycle.states["force"]["aliases"] == {"champion": "2", "previous-champion": "1"}
    tags = tags_of(cycle, "force", "2")
    assert tags["promotion.decision"] == "forced"
    assert tags["promotion.champion_before"] == "1"
    assert float(tags["promotion.candidate_test_acc"]) < float(tags["promotion.champion_test_acc"])
    assert cycle.states["rollback-force"]["aliases"] == {"champion": "1", "previous-champion": "2"}


@dataclass
class Predicted:
    rows: Path
    predictions: Path
    output: str


@pytest.fixture(scope="module")
def predicted(cycle: Cycle) -> Predicted:
    """The champion's own test rows exported, then predicted through the CLI."""
    rows, predictions = cycle.folder / "test-rows.csv", cycle.folder / "predictions.csv"
    ok(cycle.folder, "export-test-rows", "--model", MODEL, "--output", str(rows))
    arguments = ["--model", MODEL, "--input", str(rows), "--output", str(predictions)]
    return Predicted(rows, predictions, ok(cycle.folder, "predict", *arguments))


def test_predict_on_the_test_rows_reproduces_the_logged_test_accuracy(
    cycle: Cycle, predicted: Predicted
) -> None:
    frame = pd.read_csv(predicted.predictions, dtype={"prediction": str, "label": str})
    accuracy = (frame["prediction"] == frame["label"]).mean()
    logged = float(tags_of(cycle, "rollback-force", "1")["test_acc"])
    assert accuracy == pytest.approx(logged, abs=1e-6)
    assert f"test_acc {accuracy:.4f} on {len(frame)} labelled rows" in predicted.output
    assert f"logged test_acc {logged:.4f}" in predicted.output
    assert list(frame.columns[:3]) == ["id", "prediction", "probability"]


def test_commands_on_real_models_load_torch_but_never_ray(
    cycle: Cycle, predicted: Predicted
) -> None:
    arguments = ["--model", MODEL, "--input", str(predicted.rows), "--output", "again.csv"]
    loaded, done = run_reporting(cycle.folder, "predict", *arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    assert loaded == {"mlflow", "torch"}
    loaded, done = run_reporting(cycle.folder, "rollback", "--model", MODEL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert loaded == {"mlflow"}, "a rollback loads no model"
    loaded, done = run_reporting(cycle.folder, "rollback", "--model", MODEL)  # and back
    assert done.returncode == 0, done.stderr[-3000:]


def test_served_champion_answers_invocations_with_the_same_predictions(
    cycle: Cycle, predicted: Predicted
) -> None:
    features = pd.read_csv(predicted.rows).drop(columns=["label"]).head(20)
    expected = pd.read_csv(predicted.predictions).filter(like="p_").head(20).to_numpy()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline", "serve", "--model", MODEL, "--port", str(port)]
    log = cycle.folder / "serve.log"
    with background(command, cli_env(), cycle.folder, log) as server:
        wait_until(lambda: answers(f"{url}/ping"), 120, "model server", log, server)
        body = json.dumps({"inputs": features.to_numpy().tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            served = json.loads(response.read())["predictions"]
        rows = features.to_numpy().tolist()
        rows[3][7] = float("nan")
        rows[5][2] = float("inf")
        refused = urllib.request.Request(
            f"{url}/invocations", json.dumps({"inputs": rows}).encode(), request.headers
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(refused, timeout=30)
        assert answer.value.code == 400
        message = json.loads(answer.value.read())["message"]
        assert "2 input values are NaN, infinite or beyond float32's range (rows 3, 5)" in message
    assert len(served) == 20
    assert pd.DataFrame(served).to_numpy() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "--model", "no-such-model"], "no registered model 'no-such-model'"),
        (["promote", "--model", MODEL, "--version", "99"], f"model '{MODEL}' has no version 99"),
        (["promote", "--model", MODEL, "--version", "1"], "version 1 is already the champion"),
        (["promote", "--model", MODEL, "--min-delta", "-1"], "min_delta must be >= 0"),
        (
            ["predict", "--model", MODEL, "--alias", "latest", "--input", "x.csv", "--output", "y"],
            f"model '{MODEL}' has no alias 'latest'",
        ),
        (["serve", "--model", MODEL, "--alias", "staging"], "has no alias 'staging'"),
    ],
)
def test_bad_requests_fail_clearly_and_change_nothing(
    cycle: Cycle, args: list[str], message: str
) -> None:
    """Through the CLI in this process (typer's runner): each request is refused in one line
    before anything is loaded or changed."""
    before = registry_state(cycle.client, MODEL)
    done = run_in_process(cycle.folder, *args)
    output = " ".join(done.stderr.split())
    assert done.returncode == 1, output
    assert output.startswith("error: ") and message in output, output
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert registry_state(cycle.client, MODEL) == before


def test_promote_with_no_challenger_is_a_quiet_no_op(cycle: Cycle) -> None:
    """The strong challenger's promotion took its alias: nothing is left to promote, which a
    nightly schedule meets often; exit 0, one line, the registry unchanged."""
    assert "challenger" not in cycle.states["promote-strong"]["aliases"]
    assert cycle.states["promote-nothing"] == cycle.states["promote-strong"]
    line = " ".join(cycle.outputs["promote-nothing"].split())
    assert f"nothing to promote: model '{MODEL}' has no challenger; champion stays version 3" in (
        line
    )


def test_a_challenger_trained_on_another_data_set_is_refused(cycle: Cycle) -> None:
    wine = ["--set", "name=smoke-wine", "--set", "data.source=wine", *SINGLE_CONFIG, *ONE_EPOCH]
    wine += ["--set", "budget.num_samples=1"]  # one trial: what counts is the data it saw
    ok(cycle.folder, "tune", "--space", SMOKE, *wine)
    before = registry_state(cycle.client, MODEL)
    assert before["aliases"]["challenger"] == "4"
    done = run_in_process(cycle.folder, "promote", "--model", MODEL)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "version 4 was trained on 'wine' (13 features, 3 classes)" in message
    assert "'digits' (64 features, 10 classes); they cannot be compared" in message
    assert registry_state(cycle.client, MODEL) == before


def test_two_forced_promotions_at_once_apply_one_after_the_other(cycle: Cycle) -> None:
    """Both succeed; the aliases tell one consistent story: the second saw the first's champion."""
    commands = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "promote",
                "--model",
                MODEL,
                "--version",
                v,
                "--force",
            ],
            cwd=cycle.folder,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for v in ("2", "3")
    ]
    outputs = [c.communicate(timeout=300)[0] for c in commands]
    assert [c.returncode for c in commands] == [0, 0], outputs
    state = registry_state(cycle.client, MODEL)
    before = {v: state["versions"][v]["promotion.champion_before"] for v in ("2", "3")}
    [first] = [v for v, b in before.items() if b == "1"]  # the champion both started from
    [second] = [v for v in ("2", "3") if v != first]
    assert before[second] == first, "the second decision read the aliases the first left"
    assert state["aliases"]["champion"] == second
    assert state["aliases"]["previous-champion"] == first
    assert not cycle.client.search_registered_models("name LIKE 'pipeline-lock.%'")
