"""The scores a sweep can rank on, against scikit-learn's, and their noise: intervals and the
paired comparison the promotion gate uses for every score but accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from pipeline.config import Hyperparameters, load_experiment
from pipeline.config.door import add_to_path
from pipeline.config.metrics import SCORES, scores_of, validation_names
from pipeline.core import decisions
from pipeline.core.checks import check_metrics
from pipeline.core.data import Dataset, Split, TuningData
from pipeline.core.evaluate import score
from pipeline.core.metrics import (
    FUNCTIONS,
    bootstrap_interval,
    macro_f1,
    mae,
    paired_difference_interval,
    r2,
    rmse,
    roc_auc,
)
from pipeline.core.networks import mlp
from pipeline.core.train import fit
from pipeline.errors import PipelineError
from tests.conftest import SPACES

CPU = torch.device("cpu")


def probabilities(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes)) + 1.5 * np.eye(classes)[labels]
    # Rounded: ties between rows' scores, which AUC must count half.
    exp = np.exp(np.round(logits, 1))
    return exp / exp.sum(axis=1, keepdims=True), labels


@pytest.mark.parametrize(("classes", "seed"), [(2, 0), (2, 1), (3, 2), (5, 3)])
def test_classification_scores_match_scikit_learn(classes: int, seed: int) -> None:
    p, y = probabilities(300, classes, seed)
    assert macro_f1(p, y) == pytest.approx(sk.f1_score(y, p.argmax(1), average="macro"))
    expected = (
        sk.roc_auc_score(y, p[:, 1])
        if classes == 2
        else sk.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert roc_auc(p, y) == pytest.approx(expected)


def test_macro_f1_weighs_a_rare_class_as_much_as_a_common_one() -> None:
    y = np.array([0] * 92 + [1] * 8)
    everyone_common = np.tile([0.9, 0.1], (100, 1))
    assert (everyone_common.argmax(1) == y).mean() == 0.92
    assert macro_f1(everyone_common, y) == pytest.approx(
        sk.f1_score(y, np.zeros(100), average="macro")
    )
    assert macro_f1(everyone_common, y) < 0.5


def test_regression_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(100, 30, 200)
    predicted = y + rng.normal(0, 10, 200)
    assert rmse(predicted, y) == pytest.approx(np.sqrt(sk.mean_squared_error(y, predicted)))
    assert mae(predicted, y) == pytest.approx(sk.mean_absolute_error(y, predicted))
    assert r2(predicted, y) == pytest.approx(sk.r2_score(y, predicted))


def test_every_score_of_the_catalogue_has_a_function_and_a_direction() -> None:
    for task, functions in FUNCTIONS.items():
        assert set(functions) == {s.name for s in scores_of(task)}
        assert validation_names(task)[0] == "val_loss"
    assert {name: s.mode for name, s in SCORES.items()} == {
        "loss": "min",
        "acc": "max",
        "macro_f1": "max",
        "auc": "max",
        "rmse": "min",
        "mae": "min",
        "r2": "max",
    }


def test_a_bootstrap_interval_holds_the_score_and_narrows_with_rows() -> None:
    rng = np.random.default_rng(1)
    intervals = []
    for rows in (100, 1600):
        y = rng.normal(0, 1, rows)
        predicted = y + rng.normal(0, 0.5, rows)
        low, high = bootstrap_interval(rmse, predicted, y)
        assert low < rmse(predicted, y) < high
        intervals.append(high - low)
    assert intervals[1] < intervals[0] / 3  # about sqrt(16) narrower


def test_the_gate_compares_a_regression_on_its_metric_and_says_if_it_is_noise() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(150, 60, 300)
    champion = score(y + rng.normal(0, 40, 300), y, task="regression", metric="val_rmse")
    better = score(y + rng.normal(0, 20, 300), y, task="regression", metric="val_rmse")
    barely = score(champion.outputs + rng.normal(0, 1, 300), y, task="regression", metric="rmse")
    assert champion.name == "test_rmse" and not champion.higher_is_better

    won = decisions.judge_promotion(better, champion, force=False, min_delta=0.0)
    assert won.action == "promoted"
    assert won.reason.startswith(f"test_rmse {better.value:.4f} vs {champion.value:.4f}")
    assert "beyond the noise" in won.reason and "paired-bootstrap interval" in won.reason
    # Lower is better: the worse model does not win, even by a margin below zero.
    assert decisions.judge_promotion(champion, better, False, 0.0).action == "kept"
    # A model a hair different: whichever way it falls, the interval spans zero.
    assert "inside the noise" in decisions.describe_noise(barely, champion)
    _, high = paired_difference_interval(rmse, better.outputs, champion.outputs, y)
    assert high < 0  # the better model's RMSE is lower on nearly every resample


def test_a_classification_gate_on_macro_f1_uses_the_bootstrap_not_mcnemar() -> None:
    p, y = probabilities(400, 3, 4)
    candidate = score(
        p, y, task="classification", metric="val_macro_f1", class_names=("a", "b", "c")
    )
    assert candidate.name == "test_macro_f1" and candidate.value == candidate.scores["macro_f1"]
    assert candidate.interval[0] < candidate.value < candidate.interval[1]
    noise = decisions.describe_noise(candidate, candidate)
    assert "McNemar" not in noise and "[+0.0000, +0.0000]" in noise


def recall_of_the_last_class(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """A user's metrics function: the recall of the rarest (last) class, and its name."""
    last = outputs.shape[1] - 1
    hits = (outputs.argmax(1) == last) & (targets == last)
    return {"recall_last": float(hits.sum() / max(1, (targets == last).sum())), "acc": -1.0}


def test_a_users_metrics_function_scores_epochs_tests_and_the_gate(
    digits_tuning: TuningData,
) -> None:
    """Its keys join our scores every epoch (ours keep their meaning: its `acc` is ignored), the
    sweep's metric may be one of them (in the mode the space gives), and a test and the gate
    score it as they score ours: a bootstrap interval, a paired-bootstrap comparison."""
    history: list[dict[str, float]] = []
    hp = Hyperparameters.from_params({"lr": 3e-3, "batch_size": 64})
    report = lambda metrics, _: history.append(metrics.scores)  # noqa: E731
    fit(mlp, hp, digits_tuning, max_epochs=2, report=report, device=CPU, seed=0,
        user=recall_of_the_last_class)  # fmt: skip
    assert {"val_recall_last", "val_acc", "val_macro_f1"} <= set(history[-1])
    assert 0 < history[-1]["val_acc"] <= 1 and 0 < history[-1]["val_recall_last"] <= 1
    p, y = probabilities(300, 3, 5)
    report_ = score(
        p,
        y,
        task="classification",
        metric="val_recall_last",
        class_names=("a", "b", "c"),
        user=recall_of_the_last_class,
        mode="max",
    )
    assert report_.name == "test_recall_last" and report_.higher_is_better
    assert report_.value == recall_of_the_last_class(p, y)["recall_last"]
    assert report_.scores["acc"] == (p.argmax(1) == y).mean()
    assert report_.interval[0] <= report_.value <= report_.interval[1]
    assert "paired-bootstrap" in decisions.describe_noise(report_, report_)
    with pytest.raises(KeyError, match="no mode given"):
        score(p, y, task="classification", metric="val_recall_last", class_names=("a", "b", "c"))


def test_the_preflight_calls_a_users_metrics_function_once(
    tmp_path: Path, digits: Dataset, digits_split: Split
) -> None:
    """Before any trial: a function that does not return its metric's key, or returns no
    numbers, is one line naming it."""
    (tmp_path / "user_scores.py").write_text(
        "def wrong_key(outputs, targets):\n    return {'recall': 1.0}\n"
        "def not_numbers(outputs, targets):\n    return {'recall_last': 'high'}\n"
        "def fine(outputs, targets):\n    return {'recall_last': 1.0}\n"
    )
    base = load_experiment(SPACES / "smoke.yaml", [])
    for function, fragment in (
        ("wrong_key", "metrics user_scores:wrong_key: returned recall, not recall_last"),
        ("not_numbers", "user_scores:not_numbers returned a score that is not a number"),
        ("fine", None),
    ):
        experiment = base.model_copy(
            update={"metrics": f"user_scores:{function}", "metric": "val_recall_last"}
        )
        add_to_path([str(tmp_path)])
        if fragment is None:
            check_metrics(experiment, digits, digits_split)
            continue
        with pytest.raises(PipelineError, match=re.escape(fragment)):
            check_metrics(experiment, digits, digits_split)
