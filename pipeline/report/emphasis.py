"""What every picture of a report agrees on: how a score is drawn (its distance from a perfect
score, on a log axis, where the region that decides between good trials is widest), which
trials stand out (the top few, each in a colour of its own, and the registered one), and which
trials trained at all (the rest tell what breaks training, not what to narrow next)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config.metrics import score_of
from pipeline.core.trials import trial_label
from pipeline.report.sweep import SweepData

# The top trials' colours, the same in every picture; none is a trial state's (figures).
TOP_COLOURS = ("#2ca02c", "#9467bd", "#e377c2", "#17becf", "#bcbd22")
REGISTERED_COLOUR = "#000000"  # the outline or edge that marks the registered trial
BROKE_DECADES = 1.0  # errors spread over this many decades: the far half did not train
BROKE_GAP = 1 / 3  # a gap in the scores this share of their span splits off trials that broke


@dataclass(frozen=True)
class ScoreScale:
    """How a picture draws the sweep's metric: as it is, or as its distance from the perfect
    score (1 - accuracy, an RMSE as it is) on a log axis."""

    metric: str
    perfect: float | None  # None: drawn as it is, on a linear axis

    @property
    def log(self) -> bool:
        return self.perfect is not None

    @property
    def quantity(self) -> str:
        """What is drawn: the metric, or its distance from the perfect score (`1 - val_acc`)."""
        if self.perfect is None or self.perfect == 0:
            return self.metric
        return f"{self.perfect:g} - {self.metric}"

    @property
    def label(self) -> str:
        """The score axis's label."""
        if self.perfect is None:
            return self.metric
        return f"{self.quantity} (log scale; lower is better)"

    def drawn(self, scores: pd.Series) -> pd.Series:
        """The scores as drawn: distances from the perfect score, a perfect one (zero) put at
        half the smallest distance above zero, so that a log axis can show it."""
        if self.perfect is None:
            return scores.astype(float)
        distance = (scores.astype(float) - self.perfect).abs()
        positive = distance[distance > 0]
        floor = float(positive.min()) / 2 if len(positive) else 1e-6
        return distance.where(~(distance == 0), floor)


def score_scale(data: SweepData) -> ScoreScale:
    score = score_of(data.metric, "max" if data.higher_is_better else "min")
    return ScoreScale(data.metric, score.perfect)


def ranked_ids(data: SweepData) -> list[str]:
    """The valid trials' ids, best first (ties to the lower number, the earlier trial)."""
    valid = data.trials[data.trials["valid"]]
    ordered = valid.sort_values(
        [data.metric, "number"], ascending=[not data.higher_is_better, True], kind="stable"
    )
    return [str(t) for t in ordered["trial_id"]]


@dataclass(frozen=True)
class Emphasis:
    """The trials a picture brings forward: the top few, each in its colour, and the
    registered one; labels as a person reads them (t07)."""

    colours: dict[str, str]  # trial id -> its colour, best first
    labels: dict[str, str]  # every trial id -> t07
    registered: str | None  # the registered trial's id (else None)

    def legend_label(self, trial_id: str) -> str:
        place = list(self.colours).index(trial_id) + 1
        mark = ", registered" if trial_id == self.registered else ""
        return f"{self.labels[trial_id]} (#{place}{mark})"


def emphasis(data: SweepData, top: int = len(TOP_COLOURS)) -> Emphasis:
    ids = ranked_ids(data)[:top]
    labels = {
        str(t): trial_label(int(n))
        for t, n in zip(data.trials["trial_id"], data.trials["number"], strict=True)
    }
    registered = data.winner.row.trial_id if data.winner is not None else None
    return Emphasis(dict(zip(ids, TOP_COLOURS, strict=False)), labels, registered)


def ranked_values(data: SweepData, trials: pd.DataFrame) -> pd.Series:
    """The trials' scores where the report ranks and compares them, lower is better: decades of
    the distance from perfect (log10) where there is one, else the metric in its direction."""
    scale = score_scale(data)
    drawn = scale.drawn(trials[data.metric])
    if scale.log:
        return pd.Series(np.log10(drawn), index=trials.index)
    return -drawn if data.higher_is_better else drawn


def broke(data: SweepData) -> frozenset[str]:
    """The valid trials that did not train. Where the distance from perfect spans at least
    `BROKE_DECADES` (the best trial's error a tenth of the worst's, or less): those nearer the
    worst than the best, in decades. Otherwise those below the widest gap in the scores, if that
    gap is at least `BROKE_GAP` of their span. None when the trials scored alike."""
    valid = data.trials[data.trials["valid"]]
    values = ranked_values(data, valid).sort_values()
    if len(values) < 3 or not values.iloc[-1] > values.iloc[0]:
        return frozenset()
    low, high = values.iloc[0], values.iloc[-1]
    if score_scale(data).log:
        if high - low < BROKE_DECADES:
            return frozenset()
        below = values.index[values > (low + high) / 2]
    else:
        gaps = values.diff().iloc[1:]
        widest = int(np.argmax(gaps.to_numpy())) + 1
        if gaps.iloc[widest - 1] < BROKE_GAP * (high - low):
            return frozenset()
        below = values.index[widest:]
    return frozenset(str(t) for t in valid.loc[below, "trial_id"])
