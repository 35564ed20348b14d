"""The scores a sweep can rank on: each one's name, direction and the tasks it applies to.

Every epoch of a trial reports `train_loss` and the `val_<score>` of each score of its task;
the final model is tested on `test_<score>`. The functions that compute them are in
`core.metrics`; the names and directions are written here once, so that the config can refuse a
metric that does not fit the task or a mode that does not fit the metric before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
Mode = Literal["max", "min"]


@dataclass(frozen=True)
class Score:
    """One score of a model's predictions against the true targets."""

    name: str  # acc, loss, macro_f1, ...: reported as val_<name> and test_<name>
    mode: Mode  # which way is better
    tasks: tuple[Task, ...]
    label: str  # what a person reads on an axis
    worst: float  # a diverged run's stand-in: finite (ASHA's and TPE's arithmetic stays sane)
    perfect: float | None = None  # the best value there is (a report plots the distance to it)


LOSS_WORST = 1e30
SCORES: dict[str, Score] = {
    score.name: score
    for score in (
        Score("loss", "min", TASKS, "loss (the training objective, unsmoothed)", LOSS_WORST, 0.0),
        Score("acc", "max", ("classification",), "accuracy", 0.0, 1.0),
        Score("macro_f1", "max", ("classification",), "macro-averaged F1", 0.0, 1.0),
        Score("auc", "max", ("classification",), "ROC AUC (one-vs-rest, macro)", 0.0, 1.0),
        Score("rmse", "min", ("regression",), "root mean squared error", LOSS_WORST, 0.0),
        Score("mae", "min", ("regression",), "mean absolute error", LOSS_WORST, 0.0),
        Score("r2", "max", ("regression",), "R² (explained variance)", -LOSS_WORST, 1.0),
    )
}
VAL_PREFIX, TEST_PREFIX = "val_", "test_"
TRAIN_LOSS = "train_loss"
VAL_LOSS = VAL_PREFIX + "loss"  # every task's: ties between equal scores go to the lower
# The metric each task ranks on unless the space names one.
DEFAULT_METRIC: dict[Task, str] = {"classification": "val_acc", "regression": "val_rmse"}


def scores_of(task: Task) -> tuple[Score, ...]:
    """The scores every epoch of a trial of this task reports, the loss first."""
    return tuple(score for score in SCORES.values() if task in score.tasks)


def validation_names(task: Task) -> tuple[str, ...]:
    """`val_loss`, `val_acc`, ...: what an epoch of this task reports besides `train_loss`."""
    return tuple(VAL_PREFIX + score.name for score in scores_of(task))


def trial_scores(task: Task) -> tuple[str, ...]:
    """A trial's scores in its table and runs: `train_loss` and its task's `val_<score>`s."""
    return (TRAIN_LOSS, *validation_names(task))


def bare_name(metric: str) -> str:
    """A metric's score name: `rmse` of `val_rmse`, `test_rmse` and `rmse`."""
    return metric.removeprefix(VAL_PREFIX).removeprefix(TEST_PREFIX)


def score_of(metric: str, mode: Mode | None = None) -> Score:
    """The score a metric name (`val_rmse`, `test_acc`, `rmse`) stands for; a name outside the
    catalogue is a key of the user's own metrics function, ranked in `mode` (KeyError without
    one)."""
    bare = bare_name(metric)
    if bare in SCORES:
        return SCORES[bare]
    if mode is None:
        raise KeyError(f"{metric}: not a score of ours, and no mode given for it")
    worst = -LOSS_WORST if mode == "max" else LOSS_WORST
    return Score(bare, mode, TASKS, f"{bare} (your metrics function's)", worst)


def is_score_column(name: str) -> bool:
    """Whether a column of a trial's table (or a key of its result) is a score: `train_loss` or
    a `val_<score>` (ours or the user's), never a hyperparameter."""
    return name == TRAIN_LOSS or name.startswith(VAL_PREFIX)


def is_score(metric: str) -> bool:
    """Whether a metric name stands for a score (`val_rmse`, `test_acc`, `rmse`)."""
    return metric.removeprefix(VAL_PREFIX).removeprefix(TEST_PREFIX) in SCORES


def check_metric(metric: str, mode: str, task: Task, *, custom: str | None = None) -> None:
    """A metric that fits the task, ranked in its own direction (ValueError otherwise); with
    the user's `custom` metrics function, a `val_<key>` of its keys, in the mode given."""
    known = [VAL_PREFIX + name for name in SCORES]
    if metric not in known and custom is not None:
        if not metric.startswith(VAL_PREFIX) or metric == VAL_PREFIX:
            raise ValueError(
                f"metric: {metric!r} is neither ours ({', '.join(known)}) nor val_<key> of a key "
                f"that metrics ({custom}) returns"
            )
        return
    if metric not in known:
        raise ValueError(f"metric: {metric!r} is not one of {', '.join(known)}")
    score = score_of(metric)
    if task not in score.tasks:
        fitting = ", ".join(validation_names(task))
        raise ValueError(f"metric: {metric} does not apply to task {task} (use one of {fitting})")
    if mode != score.mode:
        better = "higher" if score.mode == "max" else "lower"
        raise ValueError(f"mode: {metric} is better {better}, so its mode is {score.mode}")
