"""Plain PyTorch training on real digits: learning, divergence, resuming, cross-validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig, Hyperparameters
from pipeline.core.data import Dataset, Split, TuningData, column_stats, tuning_data
from pipeline.core.networks import mlp
from pipeline.core.train import EpochMetrics, fit, fit_final

CPU = torch.device("cpu")


def run(
    hp: Hyperparameters, data: TuningData, epochs: int, resume: dict[str, Any] | None = None
) -> tuple[list[EpochMetrics], list[dict[str, Any]]]:
    metrics: list[EpochMetrics] = []
    states: list[dict[str, Any]] = []

    def report(m: EpochMetrics, state: dict[str, Any]) -> None:
        metrics.append(m)
        states.append(state)

    fit(mlp, hp, data, max_epochs=epochs, report=report, device=CPU, seed=0, resume=resume)
    return metrics, states


def test_loss_falls_and_accuracy_rises_on_digits(digits_tuning: TuningData) -> None:
    metrics, _ = run(
        Hyperparameters.from_params({"lr": 3e-3, "hidden_units": 64, "batch_size": 32}),
        digits_tuning,
        8,
    )
    assert [m.epoch for m in metrics] == list(range(1, 9))
    assert metrics[-1].train_loss < metrics[0].train_loss / 3
    assert metrics[-1].scores["val_loss"] < metrics[0].scores["val_loss"]
    assert metrics[-1].scores["val_acc"] >= 0.93
    assert all(m.train_seconds > 0 and not m.diverged for m in metrics)


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_every_optimizer_learns(digits_tuning: TuningData, optimizer: str) -> None:
    lr = {"gd": 0.5, "sgd": 0.05, "momentum": 0.02}.get(optimizer, 2e-3)
    hp = Hyperparameters.from_params({"optimizer": optimizer, "lr": lr, "batch_size": 32})
    metrics, _ = run(hp, digits_tuning, 6 if optimizer != "gd" else 30)
    assert metrics[-1].scores["val_acc"] > 0.6, f"{optimizer}: {metrics[-1]}"


def test_full_batch_gradient_descent_takes_one_step_per_epoch(digits_tuning: TuningData) -> None:
    hp = Hyperparameters.from_params({"optimizer": "gd", "lr": 0.1, "batch_size": 32})
    assert hp.batch_size is None
    # SGD keeps no per-step state, so count steps with Adam's step counter on a full batch.
    adam_full = Hyperparameters(optimizer="adam", batch_size=None)
    _, adam_states = run(adam_full, digits_tuning, 3)
    step = adam_states[-1]["folds"][0]["optimizer"]["state"][0]["step"]
    assert float(step) == 3.0


def test_too_high_learning_rate_diverges_with_worst_case_finite_metrics(
    digits_tuning: TuningData,
) -> None:
    hp = Hyperparameters(optimizer="sgd", lr=1e6, batch_size=32)
    metrics, states = run(hp, digits_tuning, 10)
    last = metrics[-1]
    assert last.diverged
    assert len(metrics) < 10, "training must stop at the first non-finite epoch"
    # The worst of each score, for every score of the task: none may read as a good epoch.
    assert last.scores == {
        "val_loss": 1e30,
        "val_acc": 0.0,
        "val_macro_f1": 0.0,
        "val_auc": 0.0,
    }
    assert last.train_loss == 1e30
    assert states[-1] == {}, "a diverged epoch leaves no checkpoint"


def test_resume_continues_after_the_checkpointed_epoch(digits_tuning: TuningData) -> None:
    hp = Hyperparameters(lr=3e-3, batch_size=64)
    full, _ = run(hp, digits_tuning, 4)
    _, states = run(hp, digits_tuning, 2)
    rest, _ = run(hp, digits_tuning, 4, resume=states[-1])
    assert [m.epoch for m in rest] == [3, 4]
    # Same seed, same RNG state restored: resuming reproduces the uninterrupted run.
    assert rest[-1].scores["val_loss"] == pytest.approx(full[-1].scores["val_loss"], rel=1e-5)


def test_cross_validation_reports_the_mean_over_folds(digits_tuning: TuningData) -> None:
    rows = np.arange(len(digits_tuning.labels))
    folds = tuple((np.setdiff1d(rows, rows[i::3]), rows[i::3]) for i in range(3))
    assert digits_tuning.features is not None
    cv = TuningData(
        features=digits_tuning.features,
        examples=None,
        labels=digits_tuning.labels,
        folds=folds,
        spec=digits_tuning.spec,
        fold_stats=tuple(
            column_stats(digits_tuning.features[train], shared_scale=True) for train, _ in folds
        ),
    )
    metrics, states = run(Hyperparameters(lr=3e-3), cv, 2)
    assert len(states[-1]["folds"]) == 3
    assert metrics[-1].scores["val_acc"] > 0.8


def test_epochs_hyperparameter_caps_training(digits_tuning: TuningData) -> None:
    metrics, _ = run(Hyperparameters(epochs=2), digits_tuning, 5)
    assert [m.epoch for m in metrics] == [1, 2]


def test_each_fold_and_the_retrain_scale_as_configured(
    digits: Dataset, digits_split: Split
) -> None:
    """The fold statistics of a sweep and the retrain's model follow `data.standardize`."""
    for standardize, distinct in (("shared", 1), ("per_feature", 2)):
        config = DataConfig(source="digits", standardize=standardize)
        [(_, std)] = tuning_data(digits, digits_split, shared_scale=config.shared_scale).fold_stats
        assert min(np.unique(std).size, 2) == distinct
        network, _ = fit_final(
            mlp,
            Hyperparameters(),
            digits,
            train_rows=digits_split.train,
            epochs=1,
            device=CPU,
            seed=0,
            shared_scale=config.shared_scale,
        )
        assert min(torch.unique(network[0].std).numel(), 2) == distinct


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_a_regression_learns_standardized_targets_and_predicts_in_their_units(loss: str) -> None:
    """Diabetes progression (values 25-346): trained on standardized targets, each fold's model
    un-scales its output, so validation RMSE is in the target's units, and beats predicting the
    training mean (the target's std, about 77)."""
    from pipeline.core.data import split_dataset
    from pipeline.core.model import servable
    from pipeline.core.sources import load_bundled

    diabetes = load_bundled("diabetes")
    assert diabetes.task == "regression" and diabetes.spec.num_outputs == 1
    config = DataConfig(source="diabetes", cv_folds=3)
    split = split_dataset(diabetes, config, seed=0)
    data = tuning_data(diabetes, split, shared_scale=False)
    mean, std = data.target_stats[0]
    assert 140 < mean < 165 and 70 < std < 85
    hp = Hyperparameters.from_params({"lr": 3e-3, "batch_size": 32, "loss": loss})
    metrics, _ = run(hp, data, 30)
    last = metrics[-1].scores
    assert set(last) == {"val_loss", "val_rmse", "val_mae", "val_r2"}
    assert last["val_rmse"] < 62 < std and last["val_r2"] > 0.3
    assert last["val_loss"] == pytest.approx(last["val_rmse"] ** 2, rel=0.3)  # MSE, per fold
    network, losses = fit_final(
        mlp,
        hp,
        diabetes,
        train_rows=split.tuning_rows,
        epochs=30,
        device=CPU,
        seed=0,
        shared_scale=False,
    )
    assert losses[-1] < losses[0]
    served = servable(network, diabetes.spec)
    predicted = served(torch.from_numpy(diabetes.features[split.test])).detach().numpy()
    assert predicted.shape == (len(split.test),)
    assert 25 < predicted.mean() < 346 and predicted.std() > 20  # units, not standard scores
