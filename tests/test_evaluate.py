"""Test-split scoring: checked against hand-computed values and scikit-learn's report."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.metrics import classification_report

from pipeline.core import evaluate
from pipeline.core.evaluate import confusion_figure, score

CLASSES = ("cat", "dog", "t-shirt/top")


def test_accuracy_loss_and_confusion_by_hand() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 1, 2])
    report = score(
        probabilities, labels, task="classification", metric="val_acc", class_names=CLASSES
    )
    assert report.value == pytest.approx(0.75)
    assert report.loss == pytest.approx(-np.log([0.7, 0.8, 0.3, 0.6]).mean())
    assert report.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report.precision == pytest.approx((0.5, 1.0, 1.0))
    assert report.recall == pytest.approx((1.0, 0.5, 1.0))
    assert report.support == (1, 2, 1)


def test_per_class_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probabilities = rng.dirichlet(np.ones(3), 200)
    report = score(
        probabilities, labels, task="classification", metric="val_acc", class_names=CLASSES
    )
    expected = classification_report(
        labels, probabilities.argmax(1), output_dict=True, zero_division=0
    )
    for i, name in enumerate(CLASSES):
        assert report.per_class()[name]["f1"] == pytest.approx(expected[str(i)]["f1-score"])
        assert report.per_class()[name]["recall"] == pytest.approx(expected[str(i)]["recall"])
    assert report.scores["macro_f1"] == pytest.approx(expected["macro avg"]["f1-score"])


def test_a_confidently_wrong_prediction_keeps_the_loss_finite() -> None:
    report = score(
        np.array([[1.0, 0.0, 0.0]]),
        np.array([1]),
        task="classification",
        metric="val_acc",
        class_names=CLASSES,
    )
    assert np.isfinite(report.loss) and report.loss > 20


def test_metrics_are_the_scores_and_the_per_class_scores_an_artifact() -> None:
    report = score(
        np.eye(3), np.arange(3), task="classification", metric="val_acc", class_names=CLASSES
    )
    metrics = report.metrics()
    assert metrics["test_acc"] == 1.0
    assert not any("/" in name for name in metrics)  # no chart section per class
    assert report.per_class()[CLASSES[0]]["f1"] == 1.0


def test_probabilities_must_fit_rows_and_classes() -> None:
    with pytest.raises(ValueError, match="do not fit 2 rows and 3 classes"):
        score(
            np.ones((2, 2)),
            np.array([0, 1]),
            task="classification",
            metric="val_acc",
            class_names=CLASSES,
        )


def test_confusion_figure_renders_a_png() -> None:
    report = score(
        np.eye(3), np.arange(3), task="classification", metric="val_acc", class_names=CLASSES
    )
    buffer = io.BytesIO()
    confusion_figure(report, "title").savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("right", "rows"), [(0, 10), (10, 10), (264, 270), (135, 270), (1, 3)])
def test_the_accuracy_interval_is_wilsons(right: int, rows: int) -> None:
    """Checked against SciPy's binomial test (its own Wilson interval)."""
    from scipy.stats import binomtest

    expected = binomtest(right, rows).proportion_ci(0.95, method="wilson")
    low, high = evaluate.wilson_interval(right, rows)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    labels = np.zeros(rows, dtype=np.int64)
    probabilities = np.array([[0.9, 0.1]] * right + [[0.1, 0.9]] * (rows - right))
    report = evaluate.score(
        probabilities, labels, task="classification", metric="val_acc", class_names=("a", "b")
    )
    assert report.interval == (low, high)
    assert report.metrics()["test_acc_low"] == low and report.metrics()["test_acc_high"] == high


@pytest.mark.parametrize(("first", "second"), [(0, 0), (3, 1), (11, 0), (5, 5), (2, 9), (40, 25)])
def test_mcnemar_is_the_exact_binomial_test_of_the_rows_that_differ(
    first: int, second: int
) -> None:
    from scipy.stats import binomtest

    expected = binomtest(first, first + second, 0.5).pvalue if first + second else 1.0
    assert evaluate.mcnemar_p(first, second) == pytest.approx(expected, abs=1e-12)
