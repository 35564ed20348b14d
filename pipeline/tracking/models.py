"""The retrain run in the tracking store: its params, history and test scores under the sweep's
parent run, and the network logged with it (pt2, pickle-free, with signature and metadata)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline import tags
from pipeline.config import Scalar
from pipeline.core.decisions import Opinion, Selection
from pipeline.core.evaluate import TestReport, confusion_figure, residual_figure
from pipeline.tracking.runs import LoggedData, run_link, trial_run_id
from pipeline.tracking.store import open_client, use_tracking_uri
from pipeline.tracking.sweeps import SweepRecord

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from torch import nn

RETRAIN_RUN_NAME = "retrain"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True, kw_only=True)
class RetrainedModel:
    """A retrain's outcome, as the retrain run records it."""

    network: nn.Module  # model.servable: eval mode, on the CPU
    program: bytes  # the network, exported (`model.export_network`)
    report: TestReport  # its one test
    train_losses: list[float]  # per epoch
    train_seconds: float
    device: str
    params: dict[str, Scalar]  # hyperparameters, epochs, row counts
    data_fingerprint: str
    dataset_name: str
    # A few input rows, for the signature and the input example: float rows, or a table's rows
    # as its file holds them (what a table model takes); the model's output for them.
    example: np.ndarray | pd.DataFrame
    example_output: np.ndarray
    metadata: dict[str, Any]  # stored with the model: what prediction and promotion need
    data: list[LoggedData]  # the rows it trained on and was tested on
    selection: Selection  # the candidates' second opinions, this model's first


@dataclass(frozen=True)
class RetrainRecord:
    """Where the retrain was logged."""

    run_id: str
    model_uri: str  # runs:/... or models:/m-... URI of the logged model
    report: TestReport
    origin: dict[str, str]  # tags.MODEL_ORIGIN: what built the model, from its metadata
    trial_run_id: str | None  # the run of the trial it retrained (None: deleted)


def log_retrain_run(tracking_uri: str, sweep: SweepRecord, model: RetrainedModel) -> RetrainRecord:
    """Log the retrain under the sweep's parent run: params, history, test scores and the model."""
    client = open_client(tracking_uri)
    report = model.report
    trial = sweep.best
    trial_run = trial_run_id(client, sweep.experiment_id, sweep.parent_run_id, trial.trial_id)
    marks = {
        MLFLOW_RUN_NAME: RETRAIN_RUN_NAME,
        MLFLOW_PARENT_RUN_ID: sweep.parent_run_id,
        tags.SOURCE_TRIAL_ID: trial.trial_id,
        tags.SOURCE_TRIAL: trial.name,
        tags.DATA_FINGERPRINT: model.data_fingerprint,
        tags.DEVICE: model.device,
        MLFLOW_RUN_NOTE: f"Trial {run_link(sweep.experiment_id, trial_run, trial.name)} of "
        f"sweep {sweep.run_name}, retrained on train + validation for {sweep.epochs} epochs "
        f"and tested once. Why this trial: {model.selection.reason()}",
    }
    if trial_run is not None:
        marks[tags.SOURCE_TRIAL_RUN_ID] = trial_run
    run = client.create_run(sweep.experiment_id, run_name=RETRAIN_RUN_NAME, tags=marks)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", v, now, i + 1) for i, v in enumerate(model.train_losses)]
        metrics += [Metric(k, v, now, 0) for k, v in report.metrics().items()]
        metric = sweep.experiment.metric
        metrics += [
            Metric(f"trial_{metric}", sweep.score, now, 0),
            Metric(f"selection_{metric}", model.selection.score, now, 0),
            Metric("train_seconds", model.train_seconds, now, 0),
        ]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in model.params.items()],
            tags=[RunTag(tags.TEST_ROWS_SEEN, "once")],
        )
        client.log_inputs(run_id, [d.as_input() for d in model.data])
        client.log_dict(run_id, selection_record(model.selection), "selection.json")
        title = f"{model.dataset_name}: {report.name} {report.value:.4f}"
        if report.task == "classification":
            client.log_dict(run_id, report.per_class(), "classification_report.json")
            client.log_figure(run_id, confusion_figure(report, title), "confusion_matrix.png")
        else:
            client.log_figure(run_id, residual_figure(report, title), "predicted_vs_true.png")
        model_uri = log_network(tracking_uri, run_id, model)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    origin = {key: as_tag(model.metadata.get(key)) for key in tags.MODEL_ORIGIN}
    return RetrainRecord(run_id, model_uri, report, origin, trial_run)


def as_tag(value: Any) -> str:
    """A metadata value as a tag: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def selection_record(selection: Selection) -> dict[str, Any]:
    """How the retrained trial was chosen, as the retrain run's selection.json shows it."""
    metric = selection.metric
    return {
        "chosen": selection.chosen.trial_id,
        f"selection_{metric}": selection.score,
        "reason": selection.reason(),
        "rule": f"the best second opinion on {metric}: cross-validated again on fresh folds "
        "from a fresh seed, averaged over the epochs centred on the trial's best one",
        "candidates": [
            {
                "trial_id": o.trial_id,
                "trial": o.label,
                "sweep_rank": o.rank,
                "epoch": o.epoch,
                f"sweep_{metric}": o.sweep_score,
                f"second_opinion_{metric}": o.second_opinion,
            }
            for o in selection.opinions
        ],
    }


def read_selection(record: dict[str, Any], mode: str) -> Selection:
    """A retrain run's selection.json as the selection it records (see `selection_record`); one
    written before it held each candidate's sweep rank is ranked again on its sweep scores, in
    the metric's direction `mode`."""
    metric = str(next(k for k in record if k.startswith("selection_"))).removeprefix("selection_")
    candidates = record["candidates"]
    if not all("sweep_rank" in c for c in candidates):
        sign = -1.0 if mode == "max" else 1.0
        order = sorted(candidates, key=lambda c: sign * float(c[f"sweep_{metric}"]))
        candidates = [{**c, "sweep_rank": order.index(c) + 1} for c in candidates]
    return Selection(
        metric,
        tuple(
            Opinion(
                str(c["trial_id"]),
                int(c["epoch"]),
                float(c[f"sweep_{metric}"]),
                float(c[f"second_opinion_{metric}"]),
                label=str(c.get("trial") or ""),
                rank=int(c["sweep_rank"]),
            )
            for c in candidates
        ),
    )


def log_network(tracking_uri: str, run_id: str, model: RetrainedModel) -> str:
    """Log the network in the pickle-free pt2 format with signature, example and metadata; a
    table's as a model from code (`table_model`) over its exported program, which takes the
    table's rows as they are."""
    import mlflow.pytorch  # loads torch: only the retrain needs it
    from mlflow.models import infer_signature

    signature = infer_signature(model.example, model.example_output)
    if isinstance(model.example, pd.DataFrame):
        return log_table_model(tracking_uri, run_id, model, signature)
    # log_model speaks only through the fluent API; the active run gives it the experiment.
    with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model.network,
            name=MODEL_ARTIFACT,
            serialization_format="pt2",
            signature=signature,
            input_example=model.example,
            pip_requirements=pip_requirements(),
            metadata=model.metadata,
        )
    return str(info.model_uri)


def log_table_model(
    tracking_uri: str, run_id: str, model: RetrainedModel, signature: ModelSignature
) -> str:
    """A table model: `table_model.py` as the pyfunc's code, the exported program and the
    column spec as its artifacts, `table_encoding.py` shipped beside it."""
    import mlflow.pyfunc

    from pipeline.core import table_encoding
    from pipeline.tracking import table_model

    with tempfile.TemporaryDirectory() as folder:
        program, columns = Path(folder) / "network.pt2", Path(folder) / "columns.json"
        program.write_bytes(model.program)
        columns.write_text(json.dumps(model.metadata["table"]))
        with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=table_model.__file__,
                artifacts={table_model.PROGRAM: str(program), table_model.COLUMNS: str(columns)},
                code_paths=[table_encoding.__file__],
                signature=signature,
                input_example=model.example,
                pip_requirements=pip_requirements(),
                metadata=model.metadata,
            )
    return str(info.model_uri)


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; explicit, which skips MLflow's slow inference."""
    import mlflow
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]
