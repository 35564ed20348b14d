"""Test-split metrics from class probabilities: the one scoring used by retrain and promote."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROBABILITY_FLOOR = 1e-12  # keeps log(0) finite for a confidently wrong prediction


@dataclass(frozen=True)
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

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1))

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: test_acc, test_loss, test_macro_f1, and test_<score>/<class>."""
        flat = {
            "test_acc": self.test_acc,
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
