"""A sweep's trials as typed rows: one record per trial (its state, hyperparameters and its best
epoch's scores), the table they make (a sweep's trials.csv) and that table read back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Scalar
from pipeline.config.hyperparameters import TRIAL_COLUMNS
from pipeline.config.metrics import is_score_column


@dataclass(frozen=True, kw_only=True)
class TrialRow:
    """One trial of a sweep, as the sweep's table records it."""

    trial_id: str  # Ray's, for machines (tags, folders)
    state: str  # see decisions.TRIAL_STATES
    number: int | None = None  # its place in the searcher's order; None in an older trials.csv
    params: dict[str, Scalar] = field(default_factory=dict)  # what its configuration sampled
    epoch: int | None = None  # its best epoch; None: no score (none reported, or diverged)
    # The scores at that epoch (train_loss, val_<score>s), smoothed as the sweep ranks them.
    scores: dict[str, float] = field(default_factory=dict)
    epochs_trained: int = 0
    train_seconds: float = 0.0
    host: str | None = None  # where it ran
    device: str | None = None

    @property
    def label(self) -> str:
        """What a person reads: `t07` (`trial_label`), or the trial id where it has no number."""
        return self.trial_id if self.number is None else trial_label(self.number)

    @property
    def name(self) -> str:
        """Its run's name, e.g. `t07 adam 2x256 lr=3.2e-03` (`trial_run_name`)."""
        return self.trial_id if self.number is None else trial_run_name(self.number, self.params)

    def score(self, metric: str) -> float | None:
        """Its score on `metric` (`val_acc`, ...) at its best epoch, if it has one."""
        return self.scores.get(metric)

    def scored(self, metric: str) -> tuple[int, float]:
        """Its best epoch and its score there, for a trial that has them (one ranked valid)."""
        score = self.score(metric)
        if self.epoch is None or score is None:
            raise ValueError(f"trial {self.trial_id} has no score on {metric}")
        return self.epoch, score

    def record(self, metric: str | None = None) -> dict[str, Any]:
        """The row as trials.csv holds it: what a person reads first (number, name, state, the
        score on `metric` and the epoch of it), then the trial id, the hyperparameters and the
        rest of the summary."""
        scores = {metric: self.scores.get(metric)} if metric else {}
        return {
            "number": self.number,
            "name": self.name,
            "state": self.state,
            **scores,
            "epoch": self.epoch,
            "trial_id": self.trial_id,
            **self.params,
            **self.scores,
            "epochs_trained": self.epochs_trained,
            "train_seconds": self.train_seconds,
            "host": self.host,
            "device": self.device,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrialRow:
        """A row of trials.csv (as pandas reads it: NaN where a trial has no value, an integer
        made a float where its column has NaN) as the row it was written from."""
        values = {str(k): plain(v) for k, v in record.items()}
        scores = {
            name: float(value)
            for name, value in values.items()
            if is_score_column(name) and value is not None
        }
        epoch, number = values.get("epoch"), values.get("number")
        return cls(
            trial_id=str(values["trial_id"]),
            state=str(values.get("state") or ""),
            number=None if number is None else int(number),
            params=hyperparameters_of(values),
            epoch=None if epoch is None else int(epoch),
            scores=scores,
            epochs_trained=int(values.get("epochs_trained") or 0),
            train_seconds=as_float(values.get("train_seconds")) or 0.0,
            host=None if values.get("host") is None else str(values["host"]),
            device=None if values.get("device") is None else str(values["device"]),
        )


def trial_label(number: int) -> str:
    """A trial as a person names it: `t07`, its number in the searcher's order."""
    return f"t{number:02d}"


def trial_run_name(number: int, params: Mapping[str, Scalar]) -> str:
    """A readable name for a trial's run, e.g. `t07 adam 2x256 lr=3.2e-03` (the trial id stays
    a tag)."""
    parts = [trial_label(number)]
    if "optimizer" in params:
        parts.append(str(params["optimizer"]))
    if "hidden_layers" in params or "hidden_units" in params:
        parts.append(f"{params.get('hidden_layers', '?')}x{params.get('hidden_units', '?')}")
    if "conv_layers" in params:
        parts.append(f"conv{params['conv_layers']}")
    lr = params.get("lr")
    if isinstance(lr, (int, float)):
        parts.append(f"lr={lr:.1e}")
    return " ".join(parts)


def plain(value: Any) -> Any:
    """A value of a pandas row as plain Python: None for NaN, a number for a numpy scalar."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def is_summary(name: str) -> bool:
    """Whether a column of a trial's row is not one of its hyperparameters."""
    return name in TRIAL_COLUMNS or is_score_column(name)


def hyperparameters_of(values: Mapping[str, Any]) -> dict[str, Scalar]:
    """The hyperparameters among a row's values (training ones and the builder's); those the
    trial did not sample (None) left out."""
    return {
        name: value for name, value in values.items() if not is_summary(name) and value is not None
    }


def parse_value(text: str) -> Scalar:
    """A hyperparameter as trials.csv wrote it, of its own type again: 3 an integer, 3.0 and
    1e-3 floats, True a boolean, anything else text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def trial_frame(rows: Sequence[TrialRow], scores: Sequence[str], metric: str) -> pd.DataFrame:
    """The trials as a table, one row each (trials.csv), with their `scores`
    (`Experiment.trial_scores`), the sweep's `metric` up front (`TrialRow.record`), in the
    searcher's order. Integer hyperparameters stay integers where some trials lack them (a
    conditional option not chosen)."""
    params = list(dict.fromkeys(name for row in rows for name in row.params))
    template = TrialRow(trial_id="", state="", scores=dict.fromkeys(scores, 0.0))
    head = list(template.record(metric))
    at = head.index("trial_id") + 1
    ordered = sorted(rows, key=lambda row: (row.number is None, row.number or 0))
    table = pd.DataFrame(
        [row.record(metric) for row in ordered], columns=[*head[:at], *params, *head[at:]]
    )
    for name in table.columns:
        integral = name in params and all(
            isinstance(row.params.get(name), (int, type(None)))
            and not isinstance(row.params.get(name), bool)
            for row in rows
        )
        if name in ("number", "epoch") or integral:
            table[name] = table[name].astype("Int64")
    return table


def read_trials(table: pd.DataFrame) -> list[TrialRow]:
    """The rows of a trial table (as `trial_frame` made it, or `read_trials_csv` read it)."""
    records = table.to_dict("records")
    return [TrialRow.from_record({str(k): v for k, v in r.items()}) for r in records]


def read_trials_csv(path: str | Path) -> list[TrialRow]:
    """The rows of a trials.csv; ids stay text (a Ray trial id may be all digits)."""
    # Hyperparameters read as text and parsed one by one, so that an integer stays one in a
    # column with gaps (pandas makes such a column float).
    table = pd.read_csv(path, dtype=str)
    for name in table.columns:
        if name in ("number", "epoch", "epochs_trained", "train_seconds") or is_score_column(name):
            table[name] = pd.to_numeric(table[name])
        elif not is_summary(name):
            table[name] = table[name].map(parse_value, na_action="ignore")
    return read_trials(table)
