"""MLflow's UI page, opening where a user of this pipeline works: on the runs table.

MLflow 3.17's UI ignores an experiment's `mlflow.experimentKind` tag: its sidebar follows a
preference the browser keeps in local storage (`mlflow.workflowType_v1`, default GenAI), so a
plain experiment URL opens a Traces overview, and a first visit opens its assistant panel over
the page; its runs table opens with no score column. A short script put before MLflow's own
sets both preferences and the table's columns, only where the browser holds none: a user who
chose otherwise keeps the choice.

Used two ways, the same script each time: `create_app` is an MLflow app (`mlflow server
--app-name hpo-pipeline`, and `hpo-pipeline-basic-auth` with MLflow's basic auth) that adds it
to the page as it is served (`python -m pipeline ui` and `mlflow-server`); and `python
ui_page.py` writes it into the index.html of the MLflow it runs with (the tracking server's
image, whose package set is MLflow's alone, at build time). Standard library only at import:
the image copies this file alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Local storage key -> the value set where the browser holds none (JSON, as MLflow reads it).
PREFERENCES = {
    "mlflow.workflowType_v1": "machine_learning",  # the Model training sidebar: runs, models
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,  # the assistant stays closed
}
MARK = "hpo-pipeline-preferences"  # the script's id: the page is rewritten once
# An experiment's runs table, until the user arranges it: each trial's best-epoch scores (every
# score of config/metrics.py that a task reports; columns an experiment lacks are not shown) and
# its best epoch beside its name. (Spelled out here: the image copies this file alone;
# tests/test_ui.py holds it to the catalogue.)
TRIAL_COLUMNS = [
    *(f"metrics.`best_val_{score}`" for score in ("acc", "macro_f1", "auc", "rmse", "mae", "r2")),
    "metrics.`best_val_loss`",
    "metrics.`best_epoch`",
]
TABLE = {"selectedColumns": TRIAL_COLUMNS}
# Where MLflow's runs table keeps an experiment's layout (its ExperimentPage component state).
TABLE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["%s"]-ReactComponentState'


def preference_script() -> str:
    """Sets `PREFERENCES`, and an experiment's table layout when the page opens on it or moves
    to it (before MLflow's router sees the move: this listener is the first), where the browser
    holds none."""
    settings = json.dumps({key: json.dumps(value) for key, value in PREFERENCES.items()})
    table, key = json.dumps(json.dumps(TABLE)), json.dumps(TABLE_KEY)
    return (
        f'<script id="{MARK}">try{{var p={settings};for(var k in p)'
        "if(localStorage.getItem(k)===null)localStorage.setItem(k,p[k]);"
        "var layout=function(){var m=/^#\\/experiments\\/(\\d+)/.exec(location.hash);"
        f"if(!m)return;var k={key}.replace('%s',m[1]);"
        f"if(localStorage.getItem(k)===null)localStorage.setItem(k,{table});}};"
        'layout();addEventListener("hashchange",layout);}catch(e){}</script>'
    )


def with_preferences(page: str) -> str:
    """MLflow's index.html with the preference script before its first script; unchanged if it
    has the script already or has no script."""
    if MARK in page or "<script" not in page:
        return page
    at = page.index("<script")
    return page[:at] + preference_script() + page[at:]


def create_app(basic_auth: bool = False) -> Any:
    """MLflow's server app (with its basic auth if asked) serving the page with the script: its
    Flask app under gunicorn or waitress, the FastAPI app around it under uvicorn."""
    from flask import Response
    from mlflow.server import app

    @app.after_request
    def prefer_model_training(response: Response) -> Response:
        if response.mimetype == "text/html" and response.status_code == 200:
            response.direct_passthrough = False  # index.html is sent as a file: read it here
            response.set_data(with_preferences(response.get_data(as_text=True)))
        return response

    if basic_auth:
        from mlflow.server.auth import create_app as with_basic_auth

        return with_basic_auth(app)
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server.fastapi_app import create_fastapi_app

    under_uvicorn = _MLFLOW_SGI_NAME.get() == "uvicorn"  # type: ignore[no-untyped-call]
    return create_fastapi_app(app) if under_uvicorn else app


def create_basic_auth_app() -> Any:
    return create_app(basic_auth=True)


def write_preferences() -> Path:
    """Write the script into the index.html of the MLflow this interpreter has (an image's, at
    build time); returns the file."""
    from importlib.util import find_spec

    spec = find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("ui_page.py: no mlflow package here")
    index = Path(spec.submodule_search_locations[0], "server", "js", "build", "index.html")
    index.write_text(with_preferences(index.read_text(encoding="utf-8")), encoding="utf-8")
    return index


if __name__ == "__main__":
    print(f"MLflow's UI opens on the runs table: {write_preferences()}")
