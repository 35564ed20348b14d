"""Test-split metrics from class probabilities: the one scoring used by retrain and promote."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROBABILITY_FLOOR = 1e-12  # keeps log(0) finite for a confidently wrong prediction
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True, kw_only=True)
class TestReport:
    """Scores of one model on one labelled set of rows."""

    test_acc: float
    test_loss: float  # mean cross-entropy of the predicted probabilities
    class_names: tuple[str, ...]
    precision: tuple[float, ...]  # per class, in class order
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    confusion: np.ndarray  # rows: true class, columns: predicted class
    correct: np.ndarray  # per row, in row order: whether the prediction was right

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1))

    @property
    def test_acc_interval(self) -> tuple[float, float]:
        """The 95% interval of the accuracy on rows like these (Wilson's score interval: sound
        near 1.0, where a normal approximation runs past it)."""
        return wilson_interval(int(self.correct.sum()), len(self.correct))

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: test_acc (with test_acc_low and test_acc_high, its 95% interval),
        test_loss, test_macro_f1, and test_<score>/<class>."""
        low, high = self.test_acc_interval
        flat = {
            "test_acc": self.test_acc,
            "test_acc_low": low,
            "test_acc_high": high,
            "test_loss": self.test_loss,
            "test_macro_f1": self.macro_f1,
        }
        for i, name in enumerate(self.class_names):
            key = metric_safe(name)
            flat[f"test_precision/{key}"] = self.precision[i]
            flat[f"test_recall/{key}"] = self.recall[i]
            flat[f"test_f1/{key}"] = self.f1[i]
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


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name) or "_"


def score(
    probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> TestReport:
    """Accuracy, cross-entropy and per-class precision/recall/F1 of predicted probabilities."""
    if probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not fit {len(labels)} rows "
            f"and {len(class_names)} classes"
        )
    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    classes = len(class_names)
    # Counted here rather than with scikit-learn's metrics: importing those costs the registry
    # commands a second. A class never predicted (or never present) scores 0, as
    # zero_division=0 does there.
    confusion = np.bincount(labels * classes + predicted, minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    hits, support, claimed = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros(classes), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(classes), where=both > 0)
    return TestReport(
        test_acc=float((predicted == labels).mean()),
        test_loss=float(-np.log(np.clip(picked, PROBABILITY_FLOOR, None)).mean()),
        class_names=class_names,
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in support),
        confusion=confusion,
        correct=predicted == labels,
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
