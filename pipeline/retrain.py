"""The sweep's winner retrained on train + validation, tested once, logged as an MLflow model.

`train_and_test` is plain PyTorch (it can run on any worker, GPU included); `log_retrain` writes
its outcome to a `retrain` run nested under the sweep's parent run.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from torch import nn

from pipeline.config import HYPERPARAMETERS, Experiment, Hyperparameters, Scalar, parse_experiment
from pipeline.data import Dataset, Split
from pipeline.errors import PipelineError
from pipeline.evaluate import TestReport, confusion_figure, score
from pipeline.model import with_probabilities
from pipeline.sweep import SWEEP_PATH_TAG, best_trial
from pipeline.tracking import use_tracking_uri
from pipeline.train import EVAL_BATCH, fit_final

log = logging.getLogger(__name__)

RETRAIN_RUN_NAME = "retrain"
MODEL_ARTIFACT = "model"
INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class SweepRecord:
    """A finished sweep as MLflow recorded it: its settings and its best valid trial."""

    experiment_id: str
    parent_run_id: str
    run_name: str
    experiment: Experiment
    data_fingerprint: str
    best: dict[str, Any]

    @property
    def params(self) -> dict[str, Scalar]:
        """The best trial's hyperparameters (those its configuration sampled)."""
        return {
            name: value.item() if isinstance(value, np.generic) else value
            for name, value in self.best.items()
            if name in HYPERPARAMETERS and not pd.isna(value)
        }

    @property
    def epochs(self) -> int:
        """The epoch at which the best trial scored best: the retrain trains exactly this many."""
        return int(self.best["epoch"])


@dataclass(frozen=True)
class FinalModel:
    """A retrained network (softmax output, eval mode, on the CPU) and its one test."""

    network: nn.Module
    train_losses: list[float]
    test_probabilities: np.ndarray
    train_seconds: float
    device: str


@dataclass(frozen=True)
class RetrainRecord:
    """Where the retrain was logged."""

    run_id: str
    model_uri: str  # runs:/... or models:/m-... URI of the logged model
    report: TestReport


def find_sweep(
    client: MlflowClient, experiment_name: str, parent_run_id: str | None
) -> SweepRecord:
    """The named sweep, or the experiment's latest finished one, with its best valid trial."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise PipelineError(f"no MLflow experiment '{experiment_name}'; run a sweep first")
    experiment_id = str(experiment.experiment_id)
    if parent_run_id is None:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{SWEEP_PATH_TAG} != '' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise PipelineError(f"experiment '{experiment_name}' has no finished sweep")
        run = runs[0]
    else:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException:
            raise PipelineError(f"no run '{parent_run_id}' in the tracking store") from None
        if run.info.experiment_id != experiment_id or SWEEP_PATH_TAG not in run.data.tags:
            raise PipelineError(
                f"run '{parent_run_id}' is not a sweep of experiment '{experiment_name}'"
            )
        if run.info.status != "FINISHED":
            raise PipelineError(
                f"sweep {parent_run_id} did not finish ({run.info.status}); resume it with "
                "`python -m pipeline tune --resume` first"
            )
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        config = json.loads(
            Path(client.download_artifacts(run_id, "config.json", folder)).read_text()
        )
        table = pd.read_csv(client.download_artifacts(run_id, "trials.csv", folder))
    settings = parse_experiment(config, f"run {run_id}: config.json")
    best = best_trial(table, settings.metric, settings.mode)
    if best is None:
        raise PipelineError(
            f"sweep {run_id} has no trial that completed or stopped without diverging or "
            "failing; nothing to retrain or register"
        )
    return SweepRecord(
        experiment_id,
        run_id,
        run.info.run_name,
        settings,
        run.data.tags.get("data_fingerprint", ""),
        best,
    )


def check_same_data(sweep: SweepRecord, split: Split) -> None:
    """Refuse to retrain on data other than the sweep's (a changed file, seed or fraction)."""
    if split.fingerprint != sweep.data_fingerprint:
        raise PipelineError(
            f"the data differ from those of sweep {sweep.parent_run_id} (fingerprint "
            f"{split.fingerprint}, the sweep's {sweep.data_fingerprint}); run a new sweep"
        )


@torch.no_grad()
def predict_probabilities(network: nn.Module, features: np.ndarray) -> np.ndarray:
    """Class probabilities of a softmax network for raw feature rows, in batches."""
    parts = [
        network(torch.from_numpy(features[start : start + EVAL_BATCH])).numpy()
        for start in range(0, len(features), EVAL_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def train_and_test(
    experiment: Experiment,
    hp: Hyperparameters,
    epochs: int,
    dataset: Dataset,
    split: Split,
    device: torch.device | None = None,
) -> FinalModel:
    """Train on train + validation for `epochs`, then predict the test rows once.

    Without a `device`: the GPU when one is visible (as in a Ray task given one), else the CPU.
    """
    started = time.perf_counter()
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, losses = fit_final(
        experiment.model.family,
        hp,
        dataset.features,
        dataset.labels,
        split.tuning_rows,
        dataset.num_classes,
        dataset.image_shape,
        epochs,
        device,
        experiment.seed,
    )
    seconds = time.perf_counter() - started
    if len(losses) < epochs or not np.isfinite(losses[-1]):
        raise PipelineError(
            f"the retrain diverged at epoch {len(losses)} of {epochs} (training loss "
            f"{losses[-1]}); nothing registered"
        )
    classifier = with_probabilities(network).eval()
    probabilities = predict_probabilities(classifier, dataset.features[split.test])
    return FinalModel(classifier, losses, probabilities, seconds, str(device))


def model_metadata(experiment: Experiment, dataset: Dataset, split: Split) -> dict[str, Any]:
    """What prediction and promotion need, stored in the MLmodel file next to the network."""
    tuning = dataset.features[split.tuning_rows]
    return {
        "class_names": list(dataset.class_names),
        "feature_names": list(dataset.columns),
        "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        # Image inputs are scaled from 0..255 to the range the network was trained on.
        "feature_range": [float(tuning.min()), float(tuning.max())],
        "dataset": dataset.name,
        "data": experiment.data.model_dump(mode="json"),
        "seed": experiment.seed,
        "data_fingerprint": split.fingerprint,
        "family": experiment.model.family,
    }


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; explicit, which skips MLflow's slow inference."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]


def log_retrain(
    tracking_uri: str,
    sweep: SweepRecord,
    final: FinalModel,
    dataset: Dataset,
    split: Split,
) -> RetrainRecord:
    """Log the retrain under the sweep's parent run: params, history, test scores and the model."""
    client = MlflowClient(tracking_uri)
    report = score(final.test_probabilities, dataset.labels[split.test], dataset.class_names)
    tags = {
        MLFLOW_RUN_NAME: RETRAIN_RUN_NAME,
        MLFLOW_PARENT_RUN_ID: sweep.parent_run_id,
        # Not `trial_id`: that tag marks the sweep's trial runs.
        "source_trial_id": str(sweep.best["trial_id"]),
        "data_fingerprint": split.fingerprint,
        "device": final.device,
    }
    run = client.create_run(sweep.experiment_id, run_name=RETRAIN_RUN_NAME, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        params = {
            **sweep.params,
            "epochs": sweep.epochs,
            "rows.train": len(split.tuning_rows),
            "rows.test": len(split.test),
        }
        metrics = [Metric("train_loss", v, now, i + 1) for i, v in enumerate(final.train_losses)]
        metrics += [Metric(k, v, now, 0) for k, v in report.metrics().items()]
        metrics += [
            Metric(
                f"trial_{sweep.experiment.metric}",
                float(sweep.best[sweep.experiment.metric]),
                now,
                0,
            ),
            Metric("train_seconds", final.train_seconds, now, 0),
        ]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("test_rows_seen", "once")],
        )
        client.log_dict(run_id, report.per_class(), "classification_report.json")
        figure = confusion_figure(report, f"{dataset.name}: test accuracy {report.test_acc:.4f}")
        client.log_figure(run_id, figure, "confusion_matrix.png")
        model_uri = log_network(tracking_uri, run_id, final.network, dataset, split, sweep)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return RetrainRecord(run_id, model_uri, report)


def log_network(
    tracking_uri: str,
    run_id: str,
    network: nn.Module,
    dataset: Dataset,
    split: Split,
    sweep: SweepRecord,
) -> str:
    """Log the network in the pickle-free pt2 format with signature, example and metadata."""
    example = dataset.features[split.train[:INPUT_EXAMPLE_ROWS]]
    signature = infer_signature(example, predict_probabilities(network, example))
    # log_model speaks only through the fluent API; the active run gives it the experiment.
    with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            network,
            name=MODEL_ARTIFACT,
            serialization_format="pt2",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata=model_metadata(sweep.experiment, dataset, split),
        )
    return str(info.model_uri)
