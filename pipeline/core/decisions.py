"""The pipeline's decisions as plain functions of plain values: a trial's state, the best trial
of a sweep, and whether a candidate model replaces the champion. No Ray, no MLflow."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Hyperparameters, flatten_sample
from pipeline.config.metrics import VAL_LOSS
from pipeline.core.evaluate import TestReport, mcnemar_p
from pipeline.core.metrics import paired_difference_interval
from pipeline.core.trials import TrialRow

TRIAL_STATES = ("completed", "stopped", "diverged", "errored", "interrupted")
VALID_STATES = ("completed", "stopped")  # the states a best trial may have
EPSILON = 1e-9  # accuracies are ratios of counts; differences below this are ties
SCORE_WINDOW = 5  # epochs averaged into a trial's score at each epoch (see `best_epoch`)
NOISE_LEVEL = 0.05  # a promotion's difference at a McNemar p above this is inside the noise
CANDIDATES = 3  # the sweep's best trials given a second opinion before one is retrained


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


def smoothed(history: list[dict[str, float]], metric: str) -> list[dict[str, float]]:
    """A trial's epochs that scored `metric`, in epoch order, each with its metrics averaged over
    the `SCORE_WINDOW` epochs centred on it (fewer at either end of the history).

    Why averaged: the maximum over every (trial, epoch) pair of a noisy score is biased upward,
    and the epoch it picks is partly luck; an epoch in the middle of a good stretch is not.
    """
    scored = sorted(
        (epoch for epoch in history if pd.notna(epoch.get(metric))), key=lambda e: e["epoch"]
    )
    reach = SCORE_WINDOW // 2
    averaged = []
    for i, epoch in enumerate(scored):
        window = scored[max(0, i - reach) : i + reach + 1]
        means = {
            name: float(np.mean([e[name] for e in window if pd.notna(e.get(name))]))
            for name in epoch
            if name not in ("epoch", "timestamp") and pd.notna(epoch[name])
        }
        averaged.append({**epoch, **means})
    return averaged


def best_epoch(history: list[dict[str, float]], metric: str, mode: str) -> dict[str, float] | None:
    """A trial's best epoch on its `smoothed` `metric`, with its metrics so averaged (the trial's
    score, which ranks it); among equal scores the earliest. None for an empty history."""
    averaged = smoothed(history, metric)
    if not averaged:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(averaged, key=lambda epoch: (sign * epoch[metric], epoch["epoch"]))


def score_at(history: list[dict[str, float]], metric: str, epoch: int) -> float | None:
    """The `smoothed` `metric` at `epoch`, or at the last epoch before it where the history ends
    sooner (a diverged run's last epoch carries its worst-case metrics); None for no epochs."""
    reached = [e for e in smoothed(history, metric) if e["epoch"] <= epoch]
    return reached[-1][metric] if reached else None


def with_states(rows: list[TrialRow], states: dict[str, str]) -> list[TrialRow]:
    """The trials with each one's state replaced by the final state it was tracked with
    (`running` is not final: a killed driver leaves it behind)."""
    return [
        replace(row, state=states[row.trial_id])
        if states.get(row.trial_id) in TRIAL_STATES
        else row
        for row in rows
    ]


def rank_trials(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """The completed or early-stopped trials with a score, best first; diverged and errored
    trials never qualify. Ties (common: accuracies are counts over a few hundred rows) go to the
    lower val_loss, then to the earlier trial."""
    valid = [r for r in rows if r.state in VALID_STATES and r.score(metric) is not None]
    sign = 1.0 if mode == "min" else -1.0

    def key(row: TrialRow) -> tuple[float, float]:
        score = row.score(metric)
        assert score is not None  # `valid` holds scored trials only
        loss = row.score(VAL_LOSS)
        tie = loss if metric != VAL_LOSS and loss is not None else math.inf
        return sign * score, tie

    return sorted(valid, key=key)


def best_trial(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The best completed or early-stopped trial (see `rank_trials`), if any."""
    ranked = rank_trials(rows, metric, mode)
    return ranked[0] if ranked else None


@dataclass(frozen=True)
class Opinion:
    """A candidate for the retrain: one of the sweep's best trials, at its best epoch, with its
    score in the sweep and its second opinion (cross-validated on fresh folds, fresh seed)."""

    trial_id: str
    epoch: int
    sweep_score: float
    second_opinion: float
    label: str = ""  # what a person calls the trial: t07 (the trial id where none is known)
    rank: int = 0  # its place in the sweep's ranking, from 1 (set by `select`)

    @property
    def name(self) -> str:
        return self.label or self.trial_id


ORDINALS = ("first", "second", "third", "fourth", "fifth")


@dataclass(frozen=True)
class Selection:
    """The candidates, the chosen one first; its second opinion is the selection score."""

    metric: str
    opinions: tuple[Opinion, ...]

    @property
    def chosen(self) -> Opinion:
        return self.opinions[0]

    @property
    def score(self) -> float:
        return self.chosen.second_opinion

    @property
    def leader(self) -> Opinion:
        """The candidate the sweep itself ranked first."""
        return min(self.opinions, key=lambda o: o.rank)

    def reason(self) -> str:
        """Why the chosen candidate was retrained, in one sentence."""
        chosen, leader, metric = self.chosen, self.leader, self.metric
        count = len(self.opinions)
        if count == 1:
            return (
                f"{chosen.name} was the one valid trial; its second opinion on fresh folds: "
                f"{metric} {chosen.second_opinion:.4f}."
            )
        if chosen is leader:
            return (
                f"{chosen.name} led the sweep ({metric} {chosen.sweep_score:.4f}) and its second "
                f"opinion on fresh folds ({chosen.second_opinion:.4f}) was also the best of the "
                f"top {count}."
            )
        place = ORDINALS[chosen.rank - 1] if chosen.rank <= len(ORDINALS) else f"#{chosen.rank}"
        return (
            f"{chosen.name} had the best second opinion on fresh folds of the sweep's top "
            f"{count} ({metric} {chosen.second_opinion:.4f} against "
            f"{leader.second_opinion:.4f} for the sweep's leader {leader.name}), though the "
            f"sweep ranked it {place} ({chosen.sweep_score:.4f} against "
            f"{leader.sweep_score:.4f})."
        )


def select(candidates: list[Opinion], metric: str, mode: str) -> Selection:
    """The candidate with the best second opinion (ties to the better sweep rank, the order
    given). Its second opinion was measured on folds no selection had seen, so the maximum over
    a few candidates is nearly an honest estimate of how the configuration does on new rows."""
    if not candidates:
        raise ValueError("no candidates to select from")
    ranked_in_sweep = [replace(c, rank=i + 1) for i, c in enumerate(candidates)]
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(range(len(candidates)), key=lambda i: (sign * candidates[i].second_opinion, i))
    return Selection(metric, tuple(ranked_in_sweep[i] for i in ranked))


def wins(candidate: TestReport, champion: TestReport, min_delta: float) -> bool:
    """Better on the sweep's metric by at least `min_delta` (in the metric's units, its own
    direction); an exact tie goes to the lower test loss."""
    delta = candidate.value - champion.value
    if not candidate.higher_is_better:
        delta = -delta
    better = delta > EPSILON or (abs(delta) <= EPSILON and candidate.loss < champion.loss)
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
    noise = describe_noise(candidate, champion)
    name = candidate.name
    if wins(candidate, champion, min_delta):
        return Verdict(
            "promoted",
            f"{name} {candidate.value:.4f} vs {champion.value:.4f} (min_delta {min_delta}); "
            f"{noise}",
        )
    return Verdict(
        "kept",
        f"{name} {candidate.value:.4f} vs champion's {champion.value:.4f} does not win by "
        f"min_delta {min_delta}; {noise}",
    )


def describe_noise(candidate: TestReport, champion: TestReport) -> str:
    """Whether the two models' scores on the same test rows differ beyond chance.

    Accuracy: only the rows one gets right and the other wrong tell them apart (McNemar's exact
    test, 5% level). Any other score: a paired bootstrap, both models scored on the same
    resamples of the rows, and the 95% interval of the difference; beyond the noise where it
    excludes 0. A bootstrap, not a signed-rank test on per-row errors, because macro-F1, AUC
    and R² are not sums over rows: only resampling the rows scores them as they are scored.
    """
    if len(candidate.targets) != len(champion.targets) or candidate.metric != champion.metric:
        return "not scored on the same rows and metric, so not compared row by row"
    if candidate.metric == "acc":
        only_candidate = int((candidate.correct & ~champion.correct).sum())
        only_champion = int((champion.correct & ~candidate.correct).sum())
        p = mcnemar_p(only_candidate, only_champion)
        where = "inside the noise" if p >= NOISE_LEVEL else "beyond the noise"
        return (
            f"{where}: {only_candidate} test rows right only by the candidate, {only_champion} "
            f"only by the champion (McNemar p = {p:.2f})"
        )
    low, high = paired_difference_interval(
        candidate.function,
        candidate.outputs,
        champion.outputs,
        candidate.targets,
    )
    where = "inside the noise" if low <= 0 <= high else "beyond the noise"
    difference = candidate.value - champion.value
    return (
        f"{where}: candidate minus champion {candidate.name} {difference:+.4f}, 95% "
        f"paired-bootstrap interval [{low:+.4f}, {high:+.4f}] over {len(candidate.targets)} rows"
    )
