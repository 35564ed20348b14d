"""A battery of bad inputs through the real CLI (in this process, so that each case costs no
interpreter start): every one exits 1 with one line naming what is wrong, and leaves the
tracking store, the model registry and the trial storage exactly as they were."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.sources import load_bundled
from tests.conftest import ADMIN_URL, SPACES, admin_connection, http_serving

SMOKE = SPACES / "smoke.yaml"
MODEL = "smoke-digits-mlp"


@dataclass(frozen=True)
class Case:
    args: list[str]
    fragment: str  # in the one error line
    env: dict[str, str] | None = None


def write_space(folder: Path, name: str, **changes: Any) -> str:
    """smoke.yaml with top-level keys changed (data: a CSV of the folder's), as a file."""
    space = yaml.safe_load(SMOKE.read_text()) | changes
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


def write_csv(folder: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> str:
    """A space over digits as a CSV (changed by `change`); the space file's path."""
    digits = load_bundled("digits")
    frame = pd.DataFrame(digits.features[:300], columns=list(digits.columns))
    frame["digit"] = digits.labels[:300]
    path = folder / f"{name}.csv"
    change(frame).to_csv(path, index=False)
    return write_space(folder, name, data={"source": "csv", "path": str(path), "target": "digit"})


def write_regression(
    folder: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]
) -> str:
    """`write_csv`'s space as a regression of the digit's value, ranked on val_rmse."""
    path = write_csv(folder, name, change)
    space = yaml.safe_load(Path(path).read_text())
    space.update(task="regression", metric="val_rmse", mode="min")
    Path(path).write_text(yaml.safe_dump(space))
    return path


def cell(frame: pd.DataFrame, column: str, row: int, value: Any) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.rindex(",", 0, len(text) - 5)])


# A user's code folder: builders and loaders that break the contract, one module each (the
# battery runs in one process, where a module is imported once).
USER_CODE = {
    "nets_ok.py": """
from torch import nn
def build(spec, *, width: int = 8, kernel_size: "Literal[3, 5]" = 3):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
from typing import Literal
""",
    "nets_nospec.py": "def build(*, width=8):\n    pass\n",
    "nets_required.py": "def build(spec, *, width):\n    pass\n",
    "nets_dict.py": "def build(spec, *, width=8):\n    return {'width': width}\n",
    "nets_shape.py": """
from torch import nn
def build(spec, *, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
""",
    "nets_branch.py": """
import torch
from torch import nn
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)
    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return self.a(x)
        return self.b(x)
def build(spec, *, width=8):
    return Branchy()
""",
    "nets_import.py": "import no_such_dependency\n",
    "nets_reserved.py": "def build(spec, *, epochs=3):\n    pass\n",
    "tables_bad.py": """
import numpy as np
def rows(n=60, classes=3):
    x = np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32)
    return x, np.arange(n) % classes
def nan(limit=60):
    x, y = rows()
    x[17, 3] = np.nan
    return x, y
def mismatch(limit=60):
    x, y = rows()
    return x, y[:-5]
def text(limit=60):
    x, y = rows()
    return x.astype(str).astype(object) + "cm", y
def one_class(limit=60):
    x, y = rows()
    return x, np.zeros(len(y), dtype=int)
def few(limit=60):
    x, y = rows()
    y[:] = 0
    y[:10] = 1
    y[10:13] = 2
    return {"features": x, "labels": y, "class_names": ["zero", "one", "rare"]}
""",
}


def write_user_code(folder: Path) -> None:
    code = folder / "user_code"
    code.mkdir()
    for name, text in USER_CODE.items():
        (code / name).write_text(text.lstrip())
    images = folder / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(4):
            np.save(images / label / f"{i}.npy", np.zeros(2))  # not images: skipped
    from PIL import Image

    for i in range(6):
        Image.new("L", (8, 8), i * 40).save(images / "ab"[i % 2] / f"{i}.png")
    (images / "b" / "broken.png").write_bytes(b"not a png")


def user_space(folder: Path, name: str, builder: str, **changes: Any) -> str:
    """smoke.yaml tuning the user's `builder` (with `width`) from user_code/, on digits."""
    lr = {"type": "float", "low": 0.001, "high": 0.1, "log": True}
    return write_space(
        folder,
        name,
        code={"paths": ["user_code"]},
        model={"builder": builder},
        search={"algorithm": "random"},
        **{"params": {"lr": lr, "width": 8}, **changes},
    )


def user_code_cases(folder: Path) -> dict[str, Case]:
    """The door's refusals, each before Ray starts and before anything is written."""
    write_user_code(folder)
    tune = ["tune", "--space"]
    loader = {"loader": "tables_bad:nan", "args": {"limit": 60}}
    searched = str(folder / "user_code")
    return {
        "builder-no-module": Case(
            [*tune, user_space(folder, "b1", "no_such_pkg.nets:build")],
            f"model.builder no_such_pkg.nets:build: cannot import module 'no_such_pkg.nets' "
            f"(No module named 'no_such_pkg'); searched {searched}",
        ),
        "builder-dependency-missing": Case(
            [*tune, user_space(folder, "b2", "nets_import:build")],
            "importing 'nets_import' failed: ModuleNotFoundError: No module named "
            "'no_such_dependency'",
        ),
        "builder-no-function": Case(
            [*tune, user_space(folder, "b3", "nets_ok:buidl")],
            "has no 'buidl' (did you mean 'build'?)",
        ),
        "builder-no-spec": Case(
            [*tune, user_space(folder, "b4", "nets_nospec:build")],
            "builder nets_nospec:build: must take the model spec as its first positional",
        ),
        "builder-required-argument": Case(
            [*tune, user_space(folder, "b5", "nets_required:build", params={"lr": 0.01})],
            "builder nets_required:build needs 'width' (it has no default); add params.width",
        ),
        "param-unknown": Case(
            [*tune, user_space(folder, "b6", "nets_ok:build"), "--set", "params.widht=4"],
            "params.widht: 'widht' is neither a training hyperparameter nor an argument of "
            "builder nets_ok:build (did you mean 'width'?)",
        ),
        "param-outside-literal": Case(
            [*tune, user_space(folder, "b7", "nets_ok:build"), "--set", "params.kernel_size=4"],
            "params.kernel_size: '4' is not one of 3, 5",
        ),
        "builder-takes-a-reserved-name": Case(
            [*tune, user_space(folder, "b11", "nets_reserved:build")],
            "builder nets_reserved:build takes 'epochs', the name of a training hyperparameter",
        ),
        "loader-text-features": Case(
            [
                *tune,
                user_space(folder, "l6", "nets_ok:build", data={"loader": "tables_bad:text"}),
            ],
            "data.loader tables_bad:text: features are not numbers of one shape",
        ),
        "builder-returns-no-module": Case(
            [*tune, user_space(folder, "b8", "nets_dict:build")],
            "failed: TypeError: the builder returned a dict, not a torch.nn.Module",
        ),
        "builder-wrong-output": Case(
            [*tune, user_space(folder, "b9", "nets_shape:build")],
            "on two examples shaped [2, 1, 8, 8] it returns [2, 3]; expected [2, 10]",
        ),
        "builder-not-exportable": Case(
            [*tune, user_space(folder, "b10", "nets_branch:build")],
            "model.builder nets_branch:build: torch.export cannot export its forward",
        ),
        "loader-no-argument": Case(
            [
                *tune,
                user_space(folder, "l1", "nets_ok:build", data={**loader, "args": {"limt": 60}}),
            ],
            "data.args.limt: not an argument of loader tables_bad:nan (did you mean 'limit'?)",
        ),
        "loader-nan": Case(
            [*tune, user_space(folder, "l2", "nets_ok:build", data=loader)],
            "data.loader tables_bad:nan: 1 examples hold NaN or infinite values (first: row 17)",
        ),
        "loader-lengths": Case(
            [
                *tune,
                user_space(folder, "l3", "nets_ok:build", data={"loader": "tables_bad:mismatch"}),
            ],
            "data.loader tables_bad:mismatch: 60 examples but 55 labels",
        ),
        "loader-one-class": Case(
            [
                *tune,
                user_space(folder, "l4", "nets_ok:build", data={"loader": "tables_bad:one_class"}),
            ],
            "the labels hold a single class (0); nothing to learn",
        ),
        "loader-class-below-folds": Case(
            [
                *tune,
                user_space(
                    folder, "l5", "nets_ok:build", data={"loader": "tables_bad:few", "cv_folds": 5}
                ),
            ],
            "data.cv_folds is 5 but class 'rare' has only",
        ),
        "image-folder-unreadable": Case(
            [
                *tune,
                user_space(
                    folder,
                    "i1",
                    "nets_ok:build",
                    data={"source": "image_folder", "path": str(folder / "images")},
                ),
            ],
            f"{folder / 'images' / 'b' / 'broken.png'}: cannot read as an image",
        ),
    }


class NotMlflow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def cases(folder: Path, web: str, missing_db: str) -> dict[str, Case]:
    space = str(SMOKE)
    tune = ["tune", "--space"]
    truncated = write_csv(folder, "truncated", lambda f: f)
    truncate(folder / "truncated.csv")
    (folder / "list.yaml").write_text("- a\n- b\n")
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    nan_rows = folder / "nan.npy"
    np.save(nan_rows, np.full((2, 64), np.nan))
    return {
        # the search space and its overrides
        "space-missing": Case([*tune, str(folder / "nope.yaml")], "no such search-space file"),
        "space-folder": Case([*tune, str(folder)], "a folder; give a search-space YAML file"),
        "space-not-yaml": Case([*tune, str(folder / "broken.yaml")], "not valid YAML"),
        "space-a-list": Case([*tune, str(folder / "list.yaml")], "expected a mapping of keys"),
        "set-no-equals": Case([*tune, space, "--set", "budget.num_samples"], "expected key=value"),
        "set-bad-yaml": Case(
            [*tune, space, "--set", "budget.num_samples=[4"], "the value is not valid YAML"
        ),
        "set-typo": Case(
            [*tune, space, "--set", "budget.num_sample=4"], "did you mean 'num_samples'"
        ),
        "set-zero-trials": Case([*tune, space, "--set", "budget.num_samples=0"], "num_samples"),
        "set-low-above-high": Case(
            [*tune, space, "--set", "params.lr={type: float, low: 0.1, high: 0.01}"], "params.lr"
        ),
        "set-bad-scheduler": Case(
            [*tune, space, "--set", "scheduler.name=hyperband"], "scheduler.name"
        ),
        "set-bad-metric": Case([*tune, space, "--set", "metric=f1"], "metric"),
        "set-folds-one": Case([*tune, space, "--set", "data.cv_folds=1"], "cv_folds"),
        # data
        "csv-missing": Case(
            [
                *tune,
                write_space(
                    folder, "nocsv", data={"source": "csv", "path": "/nope.csv", "target": "y"}
                ),
            ],
            "no such CSV file",
        ),
        "csv-no-target": Case(
            [*tune, write_csv(folder, "notarget", lambda f: f.drop(columns=["digit"]))],
            "no column 'digit'",
        ),
        "csv-two-problems": Case(
            [
                *tune,
                write_csv(
                    folder,
                    "two",
                    lambda f: cell(cell(f, "pixel_0_1", 3, "dark"), "pixel_0_2", 5, None),
                ),
            ],
            "2 problems: column 'pixel_0_1' is not numeric (e.g. 'dark'); column 'pixel_0_2' has "
            "1 missing values",
        ),
        "csv-inf": Case(
            [*tune, write_csv(folder, "inf", lambda f: cell(f, "pixel_1_1", 7, "inf"))],
            "column 'pixel_1_1' has 1 infinite or out-of-range values",
        ),
        "csv-overflow": Case(
            [*tune, write_csv(folder, "huge", lambda f: cell(f, "pixel_1_2", 9, 1e39))],
            "column 'pixel_1_2' has 1 infinite or out-of-range values",
        ),
        "csv-empty-label": Case(
            [*tune, write_csv(folder, "nolabel", lambda f: cell(f, "digit", 2, None))],
            "column 'digit' has 1 empty labels",
        ),
        "csv-truncated": Case([*tune, truncated], "truncated: its last line (row 300)"),
        "csv-identifier": Case(
            [*tune, write_csv(folder, "ids", lambda f: f.assign(scan=[f"s{i}" for i in f.index]))],
            "column 'scan' has a different value in every row, an identifier rather than a "
            "feature (leave it out: data.drop_columns)",
        ),
        "csv-empty-column": Case(
            [*tune, write_csv(folder, "blank", lambda f: f.assign(notes=np.nan))],
            "column 'notes' is entirely empty (leave it out: data.drop_columns)",
        ),
        "regression-text-target": Case(
            [
                *tune,
                write_regression(
                    folder, "words", lambda f: f.assign(digit=f["digit"].map(lambda d: f"d{d}"))
                ),
            ],
            "column 'digit': task regression needs numeric targets, got text such as 'd0'",
        ),
        "metric-of-another-task": Case(
            [*tune, write_space(folder, "r2", metric="val_r2")],
            "metric: val_r2 does not apply to task classification",
        ),
        "mode-against-the-metric": Case(
            [
                *tune,
                write_space(
                    folder,
                    "rmse-max",
                    task="regression",
                    metric="val_rmse",
                    mode="max",
                    data={"source": "diabetes"},
                ),
            ],
            "mode: val_rmse is better lower, so its mode is min",
        ),
        "csv-one-class": Case(
            [*tune, write_csv(folder, "oneclass", lambda f: f.assign(digit=1))], "a single class"
        ),
        "csv-empty": Case(
            [*tune, write_csv(folder, "empty", lambda f: f.iloc[0:0, 0:0])], "cannot parse as CSV"
        ),
        "folds-above-smallest-class": Case(
            [
                *tune,
                write_csv(folder, "rare", lambda f: f[(f.digit != 3) | (f.index < 60)]),
                "--set",
                "data.cv_folds=8",
            ],
            "data.cv_folds is 8 but class '3' has only",
        ),
        "class-too-small-to-split": Case(
            [*tune, write_csv(folder, "tiny", lambda f: f[(f.digit != 4) | (f.index < 10)])],
            "every class needs at least 3 examples",
        ),
        # stores
        "postgres-missing-database": Case(
            [*tune, space], 'does_not_exist" does not exist', {"MLFLOW_TRACKING_URI": missing_db}
        ),
        "postgres-missing-database-promote": Case(
            ["promote", "--model", MODEL],
            "does not exist",
            {"MLFLOW_TRACKING_URI": missing_db},
        ),
        "server-not-mlflow": Case(
            [*tune, space], "is not an MLflow tracking server", {"MLFLOW_TRACKING_URI": web}
        ),
        "server-not-mlflow-history": Case(
            ["history", "--model", MODEL],
            "is not an MLflow tracking server",
            {"MLFLOW_TRACKING_URI": web},
        ),
        "store-a-folder": Case([*tune, space], "is a folder", {"MLFLOW_TRACKING_URI": "mlruns"}),
        "sqlite-under-a-file": Case(
            [*tune, space],
            "cannot create /etc/hostname/x",
            {"MLFLOW_TRACKING_URI": "sqlite:////etc/hostname/x/mlflow.db"},
        ),
        # registry and runs
        "promote-unknown-model": Case(["promote", "--model", "nope"], "no registered model 'nope'"),
        "rollback-nothing-before": Case(["rollback", "--model", MODEL], "no previous champion"),
        "predict-unknown-alias": Case(
            [
                "predict",
                "--model",
                MODEL,
                "--alias",
                "gold",
                "--input",
                str(nan_rows),
                "--output",
                str(folder / "out.csv"),
            ],
            "has no alias 'gold'",
        ),
        "retrain-unknown-experiment": Case(
            ["retrain", "--experiment", "nope"], "no MLflow experiment 'nope'"
        ),
        "resume-nothing": Case([*tune, space, "--resume"], "no interrupted sweep to resume"),
        "resume-and-abandon": Case(
            [*tune, space, "--resume", "--abandon"], "--resume and --abandon exclude each other"
        ),
        "nightly-bad-date": Case(
            ["nightly", "--space", space, "--date", "2026-13-01"], "expected a date as YYYY-MM-DD"
        ),
        "nightly-keep-zero": Case(
            ["nightly", "--space", space, "--keep", "0"], "--keep must be at least 1"
        ),
        **user_code_cases(folder),
    }


def seed_store(folder: Path) -> MlflowClient:
    """A store with a finished sweep-like run, a champion and some trial state."""
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiment = client.create_experiment("smoke")
    run = client.create_run(experiment, tags={"sweep_path": str(folder / "mlruns/ray/s")})
    client.log_metric(run.info.run_id, "best_val_acc", 0.9)
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    state = folder / "mlruns" / "ray" / "s"
    state.mkdir(parents=True)
    (state / "tuner.pkl").write_bytes(b"state")
    return client


def snapshot(client: MlflowClient, folder: Path) -> dict[str, Any]:
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    models = client.search_registered_models()
    return {
        "experiments": sorted(e.name for e in experiments),
        "runs": sorted(
            (r.info.run_id, r.info.status, sorted(r.data.tags.items()), sorted(r.data.metrics))
            for r in runs
        ),
        "models": sorted((m.name, sorted(m.aliases.items())) for m in models),
        "versions": len(client.search_model_versions(f"name = '{MODEL}'")),
        "files": sorted(
            str(p.relative_to(folder))
            for p in (folder / "mlruns").rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ),
    }


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("bad-inputs")
    client = seed_store(folder)
    admin_connection().close()  # PostgreSQL is here (or the test skips, or fails in CI)
    missing_db = make_url(ADMIN_URL).set(database="does_not_exist")
    with http_serving(NotMlflow) as web:
        yield {
            "folder": folder,
            "client": client,
            "cases": cases(folder, web, missing_db.render_as_string(hide_password=False)),
        }


def case_names() -> list[str]:
    """The battery's case names (its files written to a scratch folder, then dropped)."""
    with tempfile.TemporaryDirectory() as scratch:
        return list(cases(Path(scratch), "http://127.0.0.1:1", "postgresql://x@h/d"))


def test_the_battery_has_at_least_30_cases(battery: dict[str, Any]) -> None:
    assert len(battery["cases"]) >= 30


@pytest.mark.parametrize("name", case_names())
def test_bad_input_is_one_line_and_changes_nothing(
    battery: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder: Path = battery["folder"]
    case: Case = battery["cases"][name]
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = snapshot(battery["client"], folder)
    result = CliRunner().invoke(app, case.args, env=case.env)
    output = result.output.strip()
    assert result.exit_code == 1, output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: ") and case.fragment in output, output
    assert "Traceback" not in output
    assert snapshot(battery["client"], folder) == before
