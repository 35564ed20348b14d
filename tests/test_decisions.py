"""The pipeline's decisions on plain values: no Ray, no MLflow, milliseconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate
from pipeline.decisions import (
    best_epoch,
    best_trial,
    judge_promotion,
    planned_epochs,
    trial_state,
    wins,
    with_states,
)

CLASSES = ("a", "b")


@pytest.mark.parametrize(
    ("last", "planned", "errored", "state"),
    [
        ({"epoch": 5}, 5, False, "completed"),
        ({"epoch": 6}, 5, False, "completed"),
        ({"epoch": 2}, 5, False, "stopped"),
        ({}, 5, False, "stopped"),
        (None, 5, False, "stopped"),
        ({"epoch": 3, "diverged": True}, 5, False, "diverged"),
        ({"epoch": 5, "diverged": True}, 5, False, "diverged"),
        ({"epoch": 5}, 5, True, "errored"),
    ],
)
def test_trial_state_rule(last: dict | None, planned: int, errored: bool, state: str) -> None:
    assert trial_state(last, planned, errored) == state


def test_planned_epochs_is_the_trials_own_epochs_capped_by_the_budget() -> None:
    assert planned_epochs({"lr": 0.1}, 20) == 20
    assert planned_epochs({"epochs": 7}, 20) == 7
    assert planned_epochs({"epochs": 30}, 20) == 20
    # A conditional option's own parameters count too.
    assert planned_epochs({"optimizer": {"name": "adam", "epochs": 4}}, 20) == 4


def table(*rows: tuple[str, str, float, float]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial_id", "state", "val_acc", "val_loss"])


def test_best_trial_skips_diverged_and_errored_and_breaks_ties_on_val_loss() -> None:
    trials = table(
        ("diverged", "diverged", 0.99, 0.01),
        ("errored", "errored", 0.99, 0.01),
        ("interrupted", "interrupted", 0.99, 0.01),
        ("tie-worse-loss", "stopped", 0.95, 0.30),
        ("winner", "completed", 0.95, 0.20),
        ("worse", "completed", 0.90, 0.05),
    )
    assert best_trial(trials, "val_acc", "max")["trial_id"] == "winner"  # type: ignore[index]
    assert best_trial(trials, "val_loss", "min")["trial_id"] == "worse"  # type: ignore[index]


def test_no_best_trial_without_a_valid_one() -> None:
    assert best_trial(pd.DataFrame(), "val_acc", "max") is None
    assert best_trial(table(("d", "diverged", 0.0, 1e30)), "val_acc", "max") is None
    missing = table(("a", "completed", np.nan, np.nan))
    assert best_trial(missing, "val_acc", "max") is None


def test_tracked_states_replace_derived_ones() -> None:
    trials = table(("a", "stopped", 0.9, 0.1), ("b", "completed", 0.8, 0.2))
    merged = with_states(trials, {"a": "interrupted", "b": ""})
    assert merged["state"].tolist() == ["interrupted", "completed"]
    # `running` is what a killed driver leaves behind, not a state to keep.
    assert with_states(trials, {"a": "running"})["state"].tolist() == ["stopped", "completed"]
    assert trials["state"].tolist() == ["stopped", "completed"], "the input is left alone"


def report(correct: int, of: int = 10, confidence: float = 0.9) -> evaluate.TestReport:
    """A report on `of` rows of class a, `correct` of them predicted right with `confidence`."""
    right, wrong = [confidence, 1 - confidence], [0.4, 0.6]
    probabilities = np.array([right] * correct + [wrong] * (of - correct))
    return evaluate.score(probabilities, np.zeros(of, dtype=np.int64), CLASSES)


def test_promotion_needs_higher_accuracy_by_min_delta() -> None:
    assert wins(report(9), report(8), 0.0)
    assert not wins(report(8), report(9), 0.0)
    assert wins(report(9), report(8), 0.1)  # 0.1 exactly: enough
    assert not wins(report(9), report(8), 0.11)


def test_accuracy_decides_before_loss() -> None:
    """More right but less sure (a higher test loss) still wins; fewer right never does."""
    bolder, surer = report(9, confidence=0.55), report(8, confidence=0.99)
    assert bolder.test_loss > surer.test_loss
    assert wins(bolder, surer, 0.0) and not wins(surer, bolder, 0.0)


def test_an_exact_accuracy_tie_goes_to_the_lower_test_loss() -> None:
    assert wins(report(8, confidence=0.95), report(8, confidence=0.9), 0.0)
    assert not wins(report(8, confidence=0.9), report(8, confidence=0.95), 0.0)
    assert not wins(report(8), report(8), 0.0), "the same scores: the champion stays"


def test_judge_promotion() -> None:
    first = judge_promotion(report(5), None, force=False, min_delta=0.5)
    assert (first.action, first.reason, first.promoted) == ("promoted", "no champion yet", True)
    forced = judge_promotion(report(1), report(9), force=True, min_delta=0.0)
    assert forced.action == "forced" and forced.promoted
    won = judge_promotion(report(9), report(8), force=False, min_delta=0.0)
    assert won.action == "promoted"
    assert won.reason == "test_acc 0.9000 vs 0.8000 (min_delta 0.0)"
    lost = judge_promotion(report(8), report(9), force=False, min_delta=0.0)
    assert lost.action == "kept" and not lost.promoted
    assert "does not win by min_delta 0.0" in lost.reason


def test_best_epoch_is_the_best_score_and_the_earliest_of_equals() -> None:
    history = [
        {"epoch": 1.0, "val_acc": 0.5, "val_loss": 0.9},
        {"epoch": 2.0, "val_acc": 0.9, "val_loss": 0.4},
        {"epoch": 3.0, "val_acc": 0.9, "val_loss": 0.3},
        {"epoch": 4.0, "val_acc": 0.7, "val_loss": 0.2},
    ]
    assert best_epoch(history, "val_acc", "max") == history[1]
    assert best_epoch(history, "val_loss", "min") == history[3]
    assert best_epoch([], "val_acc", "max") is None
