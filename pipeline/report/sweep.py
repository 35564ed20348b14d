"""What a report is drawn from and what it is made of: the sweep as plain values, a section and
the report itself, shared by the importance, the pictures and the page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from pipeline.core.decisions import Selection
from pipeline.core.trials import TrialRow


@dataclass(frozen=True, kw_only=True)
class Winner:
    """The trial the sweep registered, and how it was chosen among the sweep's top few."""

    row: TrialRow
    model_version: str  # e.g. `digits-mlp version 3`
    selection: Selection | None  # None: not recorded (a retrain older than the record)


@dataclass(frozen=True, kw_only=True)
class SweepData:
    """What a report shows, as plain values.

    `trials`: one row per trial with `trial_id`, `state`, `valid` (may be the best trial: has a
    score and neither diverged nor errored), `number` (the searcher's order, from 1),
    `end_seconds` (when it ended, since the sweep started; NaN if unknown), the score column
    `metric` (its best epoch's), `epoch` (that epoch) and one column per name in `params`.
    `histories`: one row per trial and epoch with `trial_id`, `epoch`, the score column `metric`
    and `val_loss`.
    """

    experiment: str
    run_name: str
    parent_run_id: str
    started: datetime
    metric: str  # what the sweep ranked on: val_acc, val_rmse, ... (config.metrics)
    mode: str  # max or min
    seed: int  # of the importance forest and its shuffles
    params: tuple[str, ...]
    log_params: frozenset[str]  # sampled log-uniformly: drawn on a log axis
    states: tuple[str, ...]  # every state a trial can end in: counted even when none did
    trials: pd.DataFrame
    histories: pd.DataFrame
    best: TrialRow | None  # the best valid trial by its sweep score
    winner: Winner | None = None  # the trial registered from the sweep, once one is

    @property
    def higher_is_better(self) -> bool:
        return self.mode == "max"

    @property
    def chosen(self) -> TrialRow | None:
        """The trial the report presents as the sweep's outcome: the registered one, else
        (before a retrain) the best by its sweep score."""
        return self.winner.row if self.winner is not None else self.best


@dataclass(frozen=True, kw_only=True)
class Section:
    """One part of the report: a question, and a picture (or why there is none)."""

    name: str  # the PNG's file stem
    title: str
    question: str
    png: bytes | None
    note: str = ""


@dataclass(frozen=True)
class Report:
    """The report as files: the HTML page (pictures embedded) and each picture as a PNG."""

    html: str
    sections: tuple[Section, ...]

    @property
    def pngs(self) -> dict[str, bytes]:
        """File name -> PNG, for each section that has a picture."""
        return {f"{s.name}.png": s.png for s in self.sections if s.png is not None}


def order_of(data: SweepData) -> Callable[[str], tuple[int, str]]:
    """Sort key: the known states in their order, any other after them by name."""
    return lambda state: (
        data.states.index(state) if state in data.states else len(data.states),
        state,
    )
