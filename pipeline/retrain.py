"""The sweep's winner retrained on train + validation and tested once; its outcome handed to
tracking, which logs it under the sweep's parent run.

`train_and_test` is plain PyTorch (it can run on any worker, GPU included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import Experiment, Hyperparameters
from pipeline.config.door import code_fingerprint, import_callable
from pipeline.core.data import Dataset, Split, TuningData, stats_sample
from pipeline.core.decisions import SCORE_WINDOW, Selection, score_at
from pipeline.core.evaluate import score
from pipeline.core.metrics import UserScores
from pipeline.core.model import Builder, export_network, load_exported, servable
from pipeline.core.train import EVAL_BATCH, READ_BATCH, fit, fit_final
from pipeline.errors import PipelineError, first_line
from pipeline.tracking.models import RetrainedModel, RetrainRecord, log_retrain_run
from pipeline.tracking.runs import LoggedData
from pipeline.tracking.sweeps import SweepRecord

INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True, kw_only=True)
class FinalModel:
    """A retrained network (`model.servable`: class probabilities, or a regression's
    predictions in the target's units), exported where it trained (`model.export_network`), and
    its outputs for the test rows, its one test."""

    program: bytes
    train_losses: list[float]
    test_outputs: np.ndarray
    train_seconds: float
    device: str


def check_same_data(sweep: SweepRecord, split: Split) -> None:
    """Refuse to retrain on data other than the sweep's (a changed file, seed or fraction)."""
    if split.fingerprint != sweep.data_fingerprint:
        raise PipelineError(
            f"the data differ from those of sweep {sweep.parent_run_id} (fingerprint "
            f"{split.fingerprint}, the sweep's {sweep.data_fingerprint}); run a new sweep"
        )


@torch.no_grad()
def predict_outputs(network: nn.Module, dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """A servable network's outputs for these rows, read and scored in batches."""
    size = EVAL_BATCH if dataset.features is not None else READ_BATCH
    parts = [
        network(torch.from_numpy(dataset.rows(rows[start : start + size]))).numpy()
        for start in range(0, len(rows), size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def user_metrics(experiment: Experiment) -> UserScores | None:
    """The user's metrics function, if the space names one (importable here, as the builder)."""
    if experiment.metrics is None:
        return None
    function: UserScores = import_callable(experiment.metrics, (), "metrics")
    return function


def builder_of(experiment: Experiment) -> Builder:
    """The experiment's builder, ours or the user's (already importable here: on the driver's
    path, or shipped to this worker with the job)."""
    return import_callable(experiment.model.builder_reference, (), "model.builder")


def train_and_test(
    experiment: Experiment,
    hp: Hyperparameters,
    dataset: Dataset,
    split: Split,
    *,
    epochs: int,
    device: torch.device | None = None,
) -> FinalModel:
    """Train on train + validation for `epochs`, then predict the test rows once.

    Without a `device`: the GPU when one is visible (as in a Ray task given one), else the CPU.
    """
    started = time.perf_counter()
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, losses = fit_final(
        builder_of(experiment),
        hp,
        dataset,
        train_rows=split.tuning_rows,
        epochs=epochs,
        device=device,
        seed=experiment.seed,
        shared_scale=experiment.data.shared_scale,
    )
    seconds = time.perf_counter() - started
    if len(losses) < epochs or not np.isfinite(losses[-1]):
        raise PipelineError(
            f"the retrain diverged at epoch {len(losses)} of {epochs} (training loss "
            f"{losses[-1]}); nothing registered"
        )
    served = servable(network, dataset.spec).eval()
    outputs = predict_outputs(served, dataset, split.test)
    example = torch.from_numpy(dataset.rows(split.train[:INPUT_EXAMPLE_ROWS]))
    try:
        program = export_network(served, example)
    except Exception as exc:  # torch.export's errors are of many types
        raise PipelineError(
            f"model.builder {experiment.model.builder_reference}: torch.export cannot export the "
            f"winner's forward for any batch size ({first_line(exc)}); nothing registered"
        ) from None
    return FinalModel(
        program=program,
        train_losses=losses,
        test_outputs=outputs,
        train_seconds=seconds,
        device=str(device),
    )


def second_opinion(
    experiment: Experiment,
    hp: Hyperparameters,
    data: TuningData,
    *,
    epochs: int,
    device: torch.device | None = None,
) -> float:
    """The sweep's `metric` for one configuration, cross-validated again on `data` (the tuning
    rows in fresh folds, see `data.refolded`) from a fresh seed, scored as the sweep scores
    (smoothed) at `epochs`. No trial's score has seen these folds or this seed, so the winner's
    luck in the sweep does not carry over.

    Without a `device`: the GPU when one is visible, else the CPU.
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history: list[dict[str, Any]] = []
    # Trained just far enough to score `epochs` as the sweep did: the window centred on it.
    last = min(hp.planned_epochs(experiment.budget.max_epochs), epochs + SCORE_WINDOW // 2)
    fit(
        builder_of(experiment),
        hp,
        data,
        max_epochs=last,
        report=lambda metrics, _: history.append(metrics.as_dict()),
        device=device,
        seed=experiment.seed + 1,
        user=user_metrics(experiment),
    )
    score = score_at(history, experiment.metric, epochs)
    if score is None or not np.isfinite(score):
        return experiment.score.worst
    return float(score)


def model_metadata(experiment: Experiment, dataset: Dataset, split: Split) -> dict[str, Any]:
    """What prediction and promotion need, stored in the MLmodel file next to the network:
    the classes and features, the data's identity and how to rebuild them (the loader, its
    arguments and the code folders it is imported from), and what built the network."""
    rows = split.tuning_rows
    if dataset.features is None:  # a seeded sample, across the classes (files come by class)
        rows = rows[stats_sample(len(rows))]
    sample = dataset.rows(rows)
    return {
        "task": dataset.task,
        "metric": experiment.metric,
        "mode": experiment.mode,
        "metrics": experiment.metrics,
        "class_names": list(dataset.class_names),
        "table": None
        if dataset.table is None
        else {
            "columns": [column.spec() for column in dataset.table.columns],
            "imputes": dataset.table.imputes,
        },
        "feature_names": list(dataset.columns),
        "input_shape": list(dataset.input_shape),
        # Image inputs are scaled from 0..255 to the range the network was trained on.
        "feature_range": [float(sample.min()), float(sample.max())],
        "dataset": dataset.name,
        "loader": experiment.data.loader or f"source:{experiment.data.source}",
        "loader_args": experiment.data.args,
        "data": experiment.data.model_dump(mode="json"),
        "code_paths": list(experiment.code.paths),
        "code_fingerprint": code_fingerprint(experiment.code.paths),
        "seed": experiment.seed,
        "data_fingerprint": split.fingerprint,
        "family": experiment.model.short_name,
        "builder": experiment.model.builder_reference,
    }


def log_retrain(
    tracking_uri: str,
    sweep: SweepRecord,
    final: FinalModel,
    *,
    dataset: Dataset,
    split: Split,
    source: str,
    selection: Selection,
) -> RetrainRecord:
    """Score the test predictions and log the retrain (with its model, the rows it trained and
    was tested on, from `source`, and how it was selected) under the sweep."""
    rows = split.train[:INPUT_EXAMPLE_ROWS]
    network = load_exported(final.program)
    outputs = network(torch.from_numpy(dataset.rows(rows))).detach().numpy()
    params = {
        **sweep.best.params,
        "epochs": sweep.epochs,
        "rows.train": len(split.tuning_rows),
        "rows.test": len(split.test),
    }
    retrained = RetrainedModel(
        network=network,
        program=final.program,
        report=score(
            final.test_outputs,
            dataset.labels[split.test],
            task=dataset.task,
            metric=sweep.experiment.metric,
            class_names=dataset.class_names,
            user=user_metrics(sweep.experiment),
            mode=sweep.experiment.mode,
        ),
        train_losses=final.train_losses,
        train_seconds=final.train_seconds,
        device=final.device,
        params=params,
        data_fingerprint=split.fingerprint,
        dataset_name=dataset.name,
        example=dataset.model_inputs(rows),
        example_output=outputs,
        metadata=model_metadata(sweep.experiment, dataset, split),
        selection=selection,
        # MLflow keeps one input per name and digest: the test rows get a name of their own.
        data=[
            LoggedData(
                name=name,
                source=source,
                fingerprint=split.fingerprint,
                rows=len(rows),
                input_shape=dataset.input_shape,
                context=context,
            )
            for name, rows, context in (
                (dataset.name, split.tuning_rows, "training"),
                (f"{dataset.name}-test", split.test, "testing"),
            )
        ],
    )
    return log_retrain_run(tracking_uri, sweep, retrained)
