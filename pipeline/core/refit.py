"""Plain PyTorch work on a finished sweep's best trials, on any worker (GPU included), with
neither Ray nor MLflow: each candidate's second opinion, and the winner's refit on train +
validation, exported and tested once. `retrain` logs what the refit gives."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import Experiment, Hyperparameters
from pipeline.config.door import import_callable
from pipeline.core.data import Dataset, Split, TuningData
from pipeline.core.decisions import SCORE_WINDOW, score_at
from pipeline.core.metrics import UserScores
from pipeline.core.model import Builder, export_network, servable
from pipeline.core.train import EVAL_BATCH, READ_BATCH, fit, fit_final
from pipeline.errors import PipelineError, first_line

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


def use_trial_threads(experiment: Experiment) -> None:
    """Run torch on as many threads as a trial had CPUs (`resources.cpus`), as each trial ran:
    on 2 cores, three digits second opinions took 12.0 s on torch's default 2 threads and 9.8 s
    on one (small networks lose more to the threads' syncing than they gain)."""
    torch.set_num_threads(max(1, int(experiment.resources.cpus)))


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
    use_trial_threads(experiment)
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
    use_trial_threads(experiment)
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
