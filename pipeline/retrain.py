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
from pipeline.core.data import Dataset, Split, TuningData
from pipeline.core.decisions import SCORE_WINDOW, Selection, score_at
from pipeline.core.evaluate import score
from pipeline.core.model import with_probabilities
from pipeline.core.train import DIVERGED_ACC, DIVERGED_LOSS, EVAL_BATCH, fit, fit_final
from pipeline.errors import PipelineError
from pipeline.tracking.models import RetrainedModel, RetrainRecord, log_retrain_run
from pipeline.tracking.runs import LoggedData
from pipeline.tracking.sweeps import SweepRecord

INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True, kw_only=True)
class FinalModel:
    """A retrained network (softmax output, eval mode, on the CPU) and its one test."""

    network: nn.Module
    train_losses: list[float]
    test_probabilities: np.ndarray
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
        experiment.model.family,
        hp,
        features=dataset.features,
        labels=dataset.labels,
        train_rows=split.tuning_rows,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
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
    classifier = with_probabilities(network).eval()
    probabilities = predict_probabilities(classifier, dataset.features[split.test])
    return FinalModel(
        network=classifier,
        train_losses=losses,
        test_probabilities=probabilities,
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
        experiment.model.family,
        hp,
        data,
        max_epochs=last,
        report=lambda metrics, _: history.append(metrics.as_dict()),
        device=device,
        seed=experiment.seed + 1,
    )
    score = score_at(history, experiment.metric, epochs)
    if score is None or not np.isfinite(score):
        return DIVERGED_LOSS if experiment.mode == "min" else DIVERGED_ACC
    return score


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
    example = dataset.features[split.train[:INPUT_EXAMPLE_ROWS]]
    params = {
        **sweep.best.params,
        "epochs": sweep.epochs,
        "rows.train": len(split.tuning_rows),
        "rows.test": len(split.test),
    }
    retrained = RetrainedModel(
        network=final.network,
        report=score(final.test_probabilities, dataset.labels[split.test], dataset.class_names),
        train_losses=final.train_losses,
        train_seconds=final.train_seconds,
        device=final.device,
        params=params,
        data_fingerprint=split.fingerprint,
        dataset_name=dataset.name,
        example=example,
        example_output=predict_probabilities(final.network, example),
        metadata=model_metadata(sweep.experiment, dataset, split),
        selection=selection,
        # MLflow keeps one input per name and digest: the test rows get a name of their own.
        data=[
            LoggedData(
                name=name,
                source=source,
                fingerprint=split.fingerprint,
                features=dataset.features[rows],
                labels=dataset.labels[rows],
                context=context,
            )
            for name, rows, context in (
                (dataset.name, split.tuning_rows, "training"),
                (f"{dataset.name}-test", split.test, "testing"),
            )
        ],
    )
    return log_retrain_run(tracking_uri, sweep, retrained)
