"""The pipeline's decisions on plain values: no Ray, no MLflow, milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import evaluate
from pipeline.core.decisions import (
    Opinion,
    best_epoch,
    best_trial,
    judge_promotion,
    planned_epochs,
    rank_trials,
    select,
    trial_state,
    wins,
    with_states,
)
from pipeline.core.trials import TrialRow

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


def table(*rows: tuple[str, str, float | None, float | None]) -> list[TrialRow]:
    return [
        TrialRow(
            trial_id=trial_id,
            state=state,
            epoch=3,
            scores={"val_acc": acc, "val_loss": loss},
        )
        for trial_id, state, acc, loss in rows
    ]


def test_best_trial_skips_diverged_and_errored_and_breaks_ties_on_val_loss() -> None:
    trials = table(
        ("diverged", "diverged", 0.99, 0.01),
        ("errored", "errored", 0.99, 0.01),
        ("interrupted", "interrupted", 0.99, 0.01),
        ("tie-worse-loss", "stopped", 0.95, 0.30),
        ("winner", "completed", 0.95, 0.20),
        ("worse", "completed", 0.90, 0.05),
    )
    assert [t.trial_id for t in rank_trials(trials, "val_acc", "max")] == [
        "winner", "tie-worse-loss", "worse"
    ]  # fmt: skip
    assert best_trial(trials, "val_loss", "min") == trials[-1]


def test_no_best_trial_without_a_valid_one() -> None:
    assert best_trial([], "val_acc", "max") is None
    assert best_trial(table(("d", "diverged", 0.0, 1e30)), "val_acc", "max") is None
    missing = table(("a", "completed", None, None))
    assert best_trial(missing, "val_acc", "max") is None


def test_tracked_states_replace_derived_ones() -> None:
    trials = table(("a", "stopped", 0.9, 0.1), ("b", "completed", 0.8, 0.2))
    merged = with_states(trials, {"a": "interrupted", "b": ""})
    assert [t.state for t in merged] == ["interrupted", "completed"]
    # `running` is what a killed driver leaves behind, not a state to keep.
    assert [t.state for t in with_states(trials, {"a": "running"})] == ["stopped", "completed"]
    assert [t.state for t in trials] == ["stopped", "completed"], "the input is left alone"


def report(correct: int, of: int = 10, confidence: float = 0.9) -> evaluate.TestReport:
    """A report on `of` rows of class a, `correct` of them predicted right with `confidence`."""
    right, wrong = [confidence, 1 - confidence], [0.4, 0.6]
    probabilities = np.array([right] * correct + [wrong] * (of - correct))
    return evaluate.score(
        probabilities,
        np.zeros(of, dtype=np.int64),
        task="classification",
        metric="val_acc",
        class_names=CLASSES,
    )


def test_promotion_needs_higher_accuracy_by_min_delta() -> None:
    assert wins(report(9), report(8), 0.0)
    assert not wins(report(8), report(9), 0.0)
    assert wins(report(9), report(8), 0.1)  # 0.1 exactly: enough
    assert not wins(report(9), report(8), 0.11)


def test_accuracy_decides_before_loss() -> None:
    """More right but less sure (a higher test loss) still wins; fewer right never does."""
    bolder, surer = report(9, confidence=0.55), report(8, confidence=0.99)
    assert bolder.loss > surer.loss
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
    assert won.reason == (
        "test_acc 0.9000 vs 0.8000 (min_delta 0.0); inside the noise: 1 test rows right only by "
        "the candidate, 0 only by the champion (McNemar p = 1.00)"
    )
    lost = judge_promotion(report(8), report(9), force=False, min_delta=0.0)
    assert lost.action == "kept" and not lost.promoted
    assert "does not win by min_delta 0.0" in lost.reason


def test_best_epoch_is_scored_on_five_epochs_not_on_one_lucky_spike() -> None:
    """A spike of one epoch loses to a good stretch: each epoch scores the mean of the five
    centred on it (fewer at the ends), and that mean is what the best epoch reports."""
    accs = [0.50, 0.97, 0.60, 0.60, 0.90, 0.92, 0.91, 0.93, 0.80]
    history = [
        {"epoch": float(i), "val_acc": a, "val_loss": 1 - a, "timestamp": 100.0 + i}
        for i, a in enumerate(accs, 1)
    ]
    best = best_epoch(history, "val_acc", "max")
    assert best is not None and best["epoch"] == 7  # epochs 5-9 average 0.892
    assert best["val_acc"] == pytest.approx(np.mean(accs[4:9]))
    assert best["val_loss"] == pytest.approx(1 - np.mean(accs[4:9]))
    assert best["timestamp"] == 107.0  # not averaged
    worst = best_epoch(history, "val_loss", "min")
    assert worst is not None and worst["epoch"] == 7
    # The ends of the history average what there is; equal scores go to the earliest epoch.
    short = [{"epoch": 1.0, "val_acc": 0.8}, {"epoch": 2.0, "val_acc": 0.8}]
    assert best_epoch(short, "val_acc", "max") == {"epoch": 1.0, "val_acc": 0.8}
    assert best_epoch(list(reversed(history)), "val_acc", "max") == best  # by epoch, not order
    assert best_epoch([], "val_acc", "max") is None


def test_promotion_says_whether_the_difference_is_beyond_the_noise() -> None:
    """Only rows the two models score differently count: 12 to 1 is beyond chance, 3 to 1 is
    not, whatever min_delta lets through."""
    clear = judge_promotion(report(24, of=30), report(13, of=30), force=False, min_delta=0.0)
    assert clear.action == "promoted"
    assert "beyond the noise: 11 test rows right only by the candidate, 0 only by" in clear.reason
    close = judge_promotion(report(27, of=30), report(29, of=30), force=False, min_delta=0.0)
    assert close.action == "kept"
    assert "inside the noise: 0 test rows right only by the candidate, 2 only by" in close.reason


def test_select_takes_the_best_second_opinion_and_ties_go_to_the_sweeps_order() -> None:
    opinions = [
        Opinion("first", 20, 0.985, 0.975),
        Opinion("second", 12, 0.984, 0.979),
        Opinion("third", 30, 0.983, 0.979),
    ]
    chosen = select(opinions, "val_acc", "max")
    assert [o.trial_id for o in chosen.opinions] == ["second", "third", "first"]
    assert chosen.chosen.trial_id == "second" and chosen.score == 0.979
    by_loss = select([Opinion("a", 1, 0.2, 0.3), Opinion("b", 1, 0.25, 0.1)], "val_loss", "min")
    assert by_loss.chosen.trial_id == "b"
    with pytest.raises(ValueError, match="no candidates"):
        select([], "val_acc", "max")
