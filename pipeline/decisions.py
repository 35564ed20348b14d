"""The pipeline's decisions as plain functions of plain values: a trial's state, the best trial
of a sweep, and whether a candidate model replaces the champion. No Ray, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.config import Hyperparameters, flatten_sample
from pipeline.evaluate import TestReport

TRIAL_STATES = ("completed", "stopped", "diverged", "errored", "interrupted")
VALID_STATES = ("completed", "stopped")  # the states a best trial may have
EPSILON = 1e-9  # accuracies are ratios of counts; differences below this are ties


def trial_state(last_result: dict[str, Any] | None, planned_epochs: int, errored: bool) -> str:
    """completed (trained all its epochs), stopped (early, by ASHA), diverged or errored."""
    if errored:
        return "errored"
    if not last_result:
        return "stopped"
    if last_result.get("diverged"):
        return "diverged"
    return "completed" if int(last_result.get("epoch", 0)) >= planned_epochs else "stopped"


def planned_epochs(config: dict[str, Any], max_epochs: int) -> int:
    """Epochs a sampled configuration trains for when no scheduler stops it."""
    return Hyperparameters.from_params(flatten_sample(config)).planned_epochs(max_epochs)


def best_epoch(history: list[dict[str, float]], metric: str, mode: str) -> dict[str, float] | None:
    """The epoch of a trial's history (each epoch's reported metrics) that scored best on
    `metric`; among equal scores the earliest. None for an empty history."""
    scored = [epoch for epoch in history if pd.notna(epoch.get(metric))]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda epoch: (sign * epoch[metric], epoch["epoch"]))


def with_states(table: pd.DataFrame, states: dict[str, str]) -> pd.DataFrame:
    """The trial table with each trial's state replaced by the final state it was tracked with
    (`running` is not final: a killed driver leaves it behind)."""
    if table.empty:
        return table
    tracked = table["trial_id"].map(states)
    return table.assign(state=tracked.where(tracked.isin(TRIAL_STATES), table["state"]))


def rank_trials(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The completed or early-stopped trials, best first; diverged and errored trials never
    qualify. Ties (common: accuracies are counts over a few hundred rows) go to the lower
    val_loss."""
    if table.empty or metric not in table:
        return table.iloc[0:0]
    valid = table[table["state"].isin(VALID_STATES) & table[metric].notna()]
    keys, ascending = [metric], [mode == "min"]
    if metric != "val_loss" and "val_loss" in valid:
        keys.append("val_loss")
        ascending.append(True)
    return valid.sort_values(keys, ascending=ascending, kind="stable")


def best_trial(table: pd.DataFrame, metric: str, mode: str) -> dict[str, Any] | None:
    """The best completed or early-stopped trial (see `rank_trials`), if any."""
    ranked = rank_trials(table, metric, mode)
    if ranked.empty:
        return None
    return {str(k): v for k, v in ranked.iloc[0].items()}


def wins(candidate: TestReport, champion: TestReport, min_delta: float) -> bool:
    """Higher test accuracy by at least `min_delta`; an exact tie goes to the lower test loss."""
    delta = candidate.test_acc - champion.test_acc
    better = delta > EPSILON or (abs(delta) <= EPSILON and candidate.test_loss < champion.test_loss)
    return better and delta >= min_delta - EPSILON


@dataclass(frozen=True)
class Verdict:
    """What the promotion gate decided and why."""

    action: str  # promoted, forced or kept
    reason: str

    @property
    def promoted(self) -> bool:
        return self.action != "kept"


def judge_promotion(
    candidate: TestReport, champion: TestReport | None, force: bool, min_delta: float
) -> Verdict:
    """Whether the candidate becomes champion, from both models' scores on the same test rows."""
    if champion is None:
        return Verdict("promoted", "no champion yet")
    if force:
        return Verdict("forced", "promoted by hand (--force), comparison skipped")
    if wins(candidate, champion, min_delta):
        return Verdict(
            "promoted",
            f"test_acc {candidate.test_acc:.4f} vs {champion.test_acc:.4f} (min_delta {min_delta})",
        )
    return Verdict(
        "kept",
        f"test_acc {candidate.test_acc:.4f} vs champion's {champion.test_acc:.4f} does not win "
        f"by min_delta {min_delta}",
    )
