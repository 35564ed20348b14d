"""What a finished (or interrupted) sweep leaves, read from Ray's result grid as plain values:
each trial's epochs, and the trial table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import ResultGrid

from pipeline.config import Experiment, flatten_sample
from pipeline.core.decisions import best_epoch, planned_epochs, trial_state
from pipeline.core.trials import TrialRow, hyperparameters_of, plain


@dataclass(frozen=True, kw_only=True)
class TunerResults:
    """What a finished (or interrupted) `Tuner.fit` leaves, as plain values."""

    rows: list[TrialRow]  # one per trial, see `trial_rows`
    ended: int  # trials that terminated or errored
    interrupted: bool  # Ctrl-C or SIGTERM stopped it (Tune saved its state for a resume)
    terminated: bool  # SIGTERM stopped it (as Ctrl-C does)
    histories: dict[str, list[dict[str, float]]]  # trial id -> each epoch's reported metrics
    lost_checkpoints: list[str]  # trials that errored because their checkpoint was gone


# Ray's error when a resumed sweep's saved state names a checkpoint that Ray had already deleted
# (num_to_keep): a driver killed between that deletion and the next snapshot of its state.
LOST_CHECKPOINT = "Could not recover from checkpoint as it does not exist on storage anymore"


def trial_id_of(result: Any) -> str:
    """The trial id of one of a ResultGrid's results (from its folder before any result)."""
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def trial_number_of(result: Any, trial_id: str) -> int | None:
    """A trial's number in the searcher's order, from the tag at the head of its experiment tag
    (in its results, or else in its folder's name: `<trainable>_<trial id>_<tag>`)."""
    tag = (result.metrics or {}).get("experiment_tag")
    if tag is None:
        _, found, tag = Path(result.path).name.partition(f"{trial_id}_")
        if not found:
            return None
    return tag_number(str(tag))


def tag_number(experiment_tag: str) -> int:
    """The number at the head of a trial's experiment tag (the searcher writes it there)."""
    return int(experiment_tag.split("_", 1)[0] or 0)


def epoch_histories(grid: ResultGrid, scores: tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
    """Each trial's reported epochs as Ray recorded them: epoch, when (seconds since the epoch),
    and its `scores` (`Experiment.trial_scores`)."""
    histories: dict[str, list[dict[str, float]]] = {}
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        trial_id = trial_id_of(result)
        columns = ["epoch", "timestamp", *scores]
        if history is None or not set(columns) <= set(history.columns):
            histories[trial_id] = []
            continue
        histories[trial_id] = [
            {name: float(row[name]) for name in columns}
            for row in history[columns].dropna().to_dict("records")
        ]
    return histories


def trial_rows(
    grid: ResultGrid, experiment: Experiment, histories: dict[str, list[dict[str, float]]]
) -> list[TrialRow]:
    """One row per trial: id, state, hyperparameters, best epoch (of its `histories`, see
    `epoch_histories`) and its scores, where it ran."""
    rows = []
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        last = result.metrics or {}
        trial_id = trial_id_of(result)
        config = result.config or {}
        state = trial_state(
            last,
            planned_epochs(config, experiment.budget.max_epochs),
            result.error is not None,
        )
        best = best_epoch(histories.get(trial_id, []), experiment.metric, experiment.mode)
        scored = best is not None and state != "diverged"
        rows.append(
            TrialRow(
                trial_id=trial_id,
                state=state,
                number=trial_number_of(result, trial_id),
                params=hyperparameters_of({k: plain(v) for k, v in flatten_sample(config).items()}),
                epoch=int(best["epoch"]) if best and scored else None,
                scores={n: float(best[n]) for n in experiment.trial_scores}
                if best and scored
                else {},
                epochs_trained=int(last.get("epoch", 0)),
                train_seconds=(
                    float(history["train_seconds"].sum())
                    if history is not None and "train_seconds" in history
                    else 0.0
                ),
                host=last.get("hostname"),
                device=last.get("device"),
            )
        )
    return rows
