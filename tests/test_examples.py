"""Each example of examples/ as a user runs it, through the real CLI, from a copy in a folder of
the test's own (the user's package lives only there): tune, promote, predict, one request to the
served champion with the user's code moved away (and pickle refused), then (for the example
with a loader of the user's) a second night that rebuilds the test split through that loader to
judge its challenger. The version records
what made it: the builder, the loader and its arguments, the shipped code, the input shape."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline import tags
from tests.conftest import (
    REPO,
    answers,
    background,
    cli_env,
    free_port,
    one_worker,
    run_cli,
    run_in_process,
    wait_until,
)

pytestmark = [pytest.mark.slow, one_worker("examples")]
EXAMPLE_FOLDERS = REPO / "examples"
# A night as small as a sweep can be: two trials of two epochs, one split.
SMALL = {"num_samples": 2, "max_concurrent": 2, "max_epochs": 3}


def ok(folder: Path, *args: str) -> str:
    """A command's output, after it succeeded: sweeps in a process of their own, as a user runs
    them; the registry's commands in this one (their process: test_cli.py)."""
    sweeps = args[0] in ("tune", "nightly")
    done = run_cli(folder, *args) if sweeps else run_in_process(folder, *args)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def copy_example(name: str, folder: Path) -> Path:
    """The example in `folder`, shrunk to a smoke-sized budget; its space file."""
    example = folder / name
    shutil.copytree(EXAMPLE_FOLDERS / name, example, ignore=shutil.ignore_patterns("images"))
    raw = yaml.safe_load((example / "space.yaml").read_text())
    raw["budget"] = SMALL
    raw["search"] = {"n_initial_points": 1}
    raw["scheduler"] = {"name": "fifo"}
    raw["data"].pop("cv_folds", None)
    if (example / "prepare.py").exists():
        subprocess.run([sys.executable, str(example / "prepare.py")], check=True)
        raw["data"]["path"] = str(example / "images")
        raw["data"]["limit"] = 400  # of the 1,797 images: a subset read on demand
    space = example / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    return space


def pixels(path: Path) -> list[float]:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32).reshape(-1).tolist()


def served(url: str, rows: list[list[float]]) -> list[Any]:
    body = json.dumps({"inputs": rows}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        predictions: list[Any] = json.loads(response.read())["predictions"]
        return predictions


@pytest.mark.parametrize(
    ("example", "model", "builder", "loader"),
    [
        ("digit_images", "digit-images-cnn", "digit_nets.nets:build", "source:image_folder"),
        ("wine_table", "wine-cultivar", "wine_example.nets:build", "wine_example.tables:load"),
    ],
)
def test_an_example_through_its_whole_lifecycle(
    tmp_path: Path, example: str, model: str, builder: str, loader: str
) -> None:
    space = copy_example(example, tmp_path)
    code = space.parent / "src"
    output = ok(tmp_path, "tune", "--space", str(space))
    assert f"registered {model} version 1 as 'challenger'" in output
    assert "version 1 is now champion" in ok(tmp_path, "promote", "--model", model)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    version = client.get_model_version(model, "1")
    assert version.tags[tags.BUILDER] == builder
    assert version.tags[tags.LOADER] == loader
    assert len(version.tags[tags.CODE_FINGERPRINT]) == 16
    assert version.tags[tags.DATA_FINGERPRINT]
    shape = json.loads(version.tags[tags.INPUT_SHAPE])
    assert shape == ([1, 8, 8] if example == "digit_images" else [13])

    # Predictions: images from a class folder, or the test rows the loader rebuilds.
    predictions = tmp_path / "predictions.csv"
    rows = None
    if example == "digit_images":
        inputs = space.parent / "images" / "7"
    else:
        inputs = tmp_path / "rows.csv"
        ok(tmp_path, "export-test-rows", "--model", model, "--output", str(inputs))
        rows = pd.read_csv(inputs).drop(columns=["label"]).head(3).to_numpy().tolist()
    text = ok(
        tmp_path, "predict", "--model", model, "--input", str(inputs), "--output", str(predictions)
    )
    assert example == "digit_images" or "labelled rows" in text
    # Ranked on macro-F1, it is scored on it: the sweep's metric, the version's tag, predict.
    if example == "wine_table":
        assert "ranked on val_macro_f1" in output and "test_macro_f1_95" in version.tags
        assert "test_macro_f1" in text and "(logged test_macro_f1" in text
    table = pd.read_csv(predictions)
    assert len(table) > 0 and table["probability"].between(0, 1).all()

    # Served with the user's code gone: the registered program needs none of it, nor pickle.
    code.rename(tmp_path / "code-moved-away")
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "pipeline", "serve", "--model", model]
        log = tmp_path / "serve.log"
        env = cli_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
        with background([*command, "--port", str(port)], env, tmp_path, log) as server:
            wait_until(lambda: answers(f"{url}/ping"), 120, "model server", log, server)
            if rows is None:  # the first images, as predict read them (8x8, 0-255)
                names = pd.read_csv(predictions)["id"].head(3)
                rows = [pixels(inputs / name) for name in names]
            answer = served(url, rows)
        expected = pd.read_csv(predictions).filter(like="p_").head(3).to_numpy()
        assert pd.DataFrame(answer).to_numpy() == pytest.approx(expected, abs=1e-5)
    finally:
        (tmp_path / "code-moved-away").rename(code)

    # A second night: retune, retrain, register version 2, and judge it against the champion on
    # the test split rebuilt through the same loader: the user's own (wine's); the image folder
    # is a source of ours, whose nights are those of tests/test_nightly.py.
    if example != "wine_table":
        return
    night = ok(tmp_path, "nightly", "--space", str(space))
    assert "version 2" in night, night
    decided = client.get_model_version(model, "2").tags
    assert decided[tags.PROMOTION + tags.DECISION] in ("promoted", "kept"), decided
    assert decided[tags.LOADER] == loader and decided[tags.BUILDER] == builder


@one_worker("tables")  # shares no fixture with the lifecycles above: free to run beside them
def test_a_table_regression_through_its_whole_lifecycle_in_the_targets_units(
    tmp_path: Path,
) -> None:
    """The diabetes table (task regression, val_rmse, mode min from the metric; an id dropped,
    two text columns, gaps filled inside the model): tune, promote, predict the clinic's own
    file with its strings and gaps (values in the target's units, RMSE against the target
    column), one request to the served champion with a value it never saw and a gap. (A night's
    gate on test_rmse is the paired bootstrap of tests/test_metrics.py; the night itself is the
    wine example's, above.)"""
    space = copy_example("diabetes_table", tmp_path)
    model = "diabetes-progression"
    output = ok(tmp_path, "tune", "--space", str(space))
    assert "ranked on val_rmse" in output and "test_rmse" in output
    assert "version 1 is now champion" in ok(tmp_path, "promote", "--model", model)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    marks = client.get_model_version(model, "1").tags
    logged = float(marks["test_rmse"])
    low, high = json.loads(marks["test_rmse_95"])
    assert low < logged < high and "test_acc" not in marks

    # The clinic's file as it is: an id, text, blanks, the target under its own name.
    clinic = space.parent / "data" / "diabetes.csv"
    predictions = tmp_path / "predictions.csv"
    arguments = ["--model", model, "--output", str(predictions)]
    text = ok(tmp_path, "predict", "--input", str(clinic), *arguments)
    table = pd.read_csv(predictions)
    assert list(table.columns) == ["id", "prediction", "label"] and len(table) == 442
    assert table["prediction"].between(25, 346).mean() > 0.95  # the target's units
    assert "test_rmse" in text and "442 labelled rows (logged test_rmse" in text
    # Its own test rows, exported raw, reproduce the logged score.
    rows = tmp_path / "rows.csv"
    ok(tmp_path, "export-test-rows", "--model", model, "--output", str(rows))
    text = ok(tmp_path, "predict", "--input", str(rows), *arguments)
    scored = pd.read_csv(predictions)
    rmse = float(np.sqrt(((scored["prediction"] - scored["label"]) ** 2).mean()))
    assert rmse == pytest.approx(logged, rel=1e-4)
    assert f"test_rmse {rmse:.4f} on {len(scored)} labelled rows" in text
    wrong = tmp_path / "no-bmi.csv"
    pd.read_csv(clinic).drop(columns=["bmi"]).to_csv(wrong, index=False)
    refused = run_in_process(tmp_path, "predict", "--input", str(wrong), *arguments)
    assert refused.returncode == 1 and f"{wrong}: missing columns bmi" in refused.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline", "serve", "--model", model, "--port", str(port)]
    log = tmp_path / "serve.log"
    env = cli_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    first = pd.read_csv(clinic).drop(columns=["patient", "progression"]).head(3)
    first.loc[0, "age_band"] = "90s"  # never seen in training
    first.loc[1, "bp"] = None  # a gap
    body = json.loads(first.to_json(orient="split", index=False))
    with background(command, env, tmp_path, log) as server:
        wait_until(lambda: answers(f"{url}/ping"), 120, "model server", log, server)
        request = urllib.request.Request(
            f"{url}/invocations",
            json.dumps({"dataframe_split": body}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = np.ravel(json.loads(response.read())["predictions"])
    assert answer.shape == (3,) and np.isfinite(answer).all()
    assert answer[2] == pytest.approx(table["prediction"][2], abs=1e-3)
