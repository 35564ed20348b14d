"""Test-split scores from a model's outputs: the one scoring used by retrain and promote.

Outputs are class probabilities (classification) or predictions in the target's units
(regression); every score of the task is computed (`core.metrics`), and the sweep's metric gets a
95% interval: Wilson's for accuracy (a count of hits), a percentile bootstrap over the rows for
the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config.metrics import TEST_PREFIX, Mode, Task, score_of
from pipeline.core.metrics import (
    ScoreFunction,
    UserScores,
    all_scores,
    bootstrap_interval,
    confusion_matrix,
    per_class_f1,
    score_function,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True, kw_only=True)
class TestReport:
    """Scores of one model on one set of rows with known targets."""

    task: Task
    metric: str  # the score the sweep ranked on, bare (`acc`, `rmse`): what the gate compares
    mode: Mode  # its direction
    function: ScoreFunction  # how it is computed from outputs and targets (the gate resamples)
    scores: dict[str, float]  # every score of the task (and the user's), bare names
    interval: tuple[float, float]  # the 95% interval of `metric` on rows like these
    outputs: np.ndarray  # per row: the class probabilities, or the prediction
    targets: np.ndarray  # per row: the true class index, or the true value
    # Classification only: per class, in class order.
    class_names: tuple[str, ...] = ()
    precision: tuple[float, ...] = ()
    recall: tuple[float, ...] = ()
    f1: tuple[float, ...] = ()
    support: tuple[int, ...] = ()
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    @property
    def name(self) -> str:
        """The metric's test name: `test_acc`, `test_rmse`, ..."""
        return TEST_PREFIX + self.metric

    @property
    def value(self) -> float:
        """Its score on the metric."""
        return self.scores[self.metric]

    @property
    def loss(self) -> float:
        return self.scores["loss"]

    @property
    def higher_is_better(self) -> bool:
        return self.mode == "max"

    @property
    def correct(self) -> np.ndarray:
        """Classification: per row, whether the predicted class is the true one."""
        return np.asarray(self.outputs.argmax(axis=1) == self.targets)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: test_<score> of every score (the metric's 95% interval as
        test_<metric>_low and test_<metric>_high). Per-class scores go to a JSON artifact
        (`per_class`): as metrics, each name would open a chart section of its own in MLflow's
        UI, empty while the retrain run sits folded under its sweep."""
        low, high = self.interval
        flat = {TEST_PREFIX + name: value for name, value in self.scores.items()}
        flat[f"{self.name}_low"], flat[f"{self.name}_high"] = low, high
        return flat

    def per_class(self) -> dict[str, dict[str, float]]:
        """class name -> precision, recall, f1, support (for a JSON artifact)."""
        return {
            name: {
                "precision": self.precision[i],
                "recall": self.recall[i],
                "f1": self.f1[i],
                "support": self.support[i],
            }
            for i, name in enumerate(self.class_names)
        }


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (z = 1.96: 95%); (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    half /= 1 + z * z / trials
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: how likely a split at least this uneven of the rows that
    two models score differently (`only_first` right only by the first, `only_second` only by the
    second) is, were both equally good."""
    differ = only_first + only_second
    if differ == 0:
        return 1.0
    tail = sum(math.comb(differ, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / (1 << differ))  # exact integers: no overflow at many rows


def score(
    outputs: np.ndarray,
    targets: np.ndarray,
    *,
    task: Task,
    metric: str,
    class_names: tuple[str, ...] = (),
    user: UserScores | None = None,
    mode: Mode | None = None,
) -> TestReport:
    """Every score of the task (and of the `user`'s metrics function) on these rows, with the
    95% interval of `metric` (any of its names: `val_acc`, `test_rmse`, `rmse`; the user's in
    `mode`) and, for classification, per-class precision, recall and F1."""
    chosen = score_of(metric, mode)
    function = score_function(task, chosen.name, user)
    if task == "regression":
        outputs = np.asarray(outputs, np.float64).reshape(-1)
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} predictions do not fit {len(targets)} rows")
    elif outputs.shape != (len(targets), len(class_names)):
        raise ValueError(
            f"probabilities of shape {outputs.shape} do not fit {len(targets)} rows "
            f"and {len(class_names)} classes"
        )
    report = TestReport(
        task=task,
        metric=chosen.name,
        mode=chosen.mode,
        function=function,
        scores=all_scores(task, outputs, targets, user),
        interval=(0.0, 0.0),
        outputs=outputs,
        targets=targets,
    )
    if task == "regression":
        return replace(report, interval=bootstrap_interval(function, outputs, targets))
    confusion = confusion_matrix(outputs.argmax(axis=1), targets, len(class_names))
    precision, recall, f1 = per_class_f1(confusion)
    if chosen.name == "acc":  # a count of hits: Wilson's interval, exact enough and cheap
        interval = wilson_interval(int(np.trace(confusion)), len(targets))
    else:
        interval = bootstrap_interval(function, outputs, targets)
    return replace(
        report,
        interval=interval,
        class_names=class_names,
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in confusion.sum(axis=1)),
        confusion=confusion,
    )


def confusion_figure(report: TestReport, title: str) -> Figure:
    """The confusion matrix as a picture: counts in each cell, true classes down the side."""
    from matplotlib.figure import Figure  # only the retrain draws; keeps the CLI start light

    counts = report.confusion
    size = max(4.0, 0.45 * len(report.class_names) + 2)
    figure = Figure(figsize=(size + 1, size))  # no pyplot: no global state, no GUI backend
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = np.arange(len(report.class_names))
    axes.set_xticks(ticks, report.class_names, rotation=45 if len(ticks) > 6 else 0)
    axes.set_yticks(ticks, report.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    return figure


def residual_figure(report: TestReport, title: str) -> Figure:
    """A regression's test predictions against the true values, with the line they would lie
    on were every prediction exact."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    axes.scatter(report.targets, report.outputs, s=12, alpha=0.6)
    low = float(min(report.targets.min(), report.outputs.min()))
    high = float(max(report.targets.max(), report.outputs.max()))
    axes.plot([low, high], [low, high], color="grey", linewidth=1, label="exact")
    axes.set_xlabel("true")
    axes.set_ylabel("predicted")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure
