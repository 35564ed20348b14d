"""The scores of `config.metrics`, computed from a model's outputs and the true targets, and
their noise: an interval for one model's score, a paired comparison of two models' scores.

Outputs are class probabilities (rows, classes) for classification and predictions in the
target's units (rows,) for regression. Counted with numpy rather than scikit-learn's metrics:
importing those costs every trial and every registry command a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from pipeline.config.metrics import SCORES, Task

PROBABILITY_FLOOR = 1e-12  # keeps log(0) finite for a confidently wrong prediction
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0  # the same resamples for every model: intervals are reproducible

ScoreFunction = Callable[[np.ndarray, np.ndarray], float]


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts: rows the true class, columns the predicted one."""
    counts = np.bincount(labels * classes + predicted, minlength=classes * classes)
    return counts.reshape(classes, classes)


def per_class_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class; a class never predicted (or never present) scores 0,
    as scikit-learn's zero_division=0 does."""
    classes = len(confusion)
    hits, support, claimed = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros(classes), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(classes), where=both > 0)
    return precision, recall, f1


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.log(np.clip(picked, PROBABILITY_FLOOR, None)).mean())


def macro_f1(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes present in the labels or the predictions (scikit-learn's
    `average="macro"`): a rare class counts as much as a common one."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(predicted, labels, classes)
    _, _, f1 = per_class_f1(confusion)
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    return float(f1[seen].mean()) if seen.any() else 0.0


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_ranks = (starts + ends + 1) / 2.0  # the mean of the 1-based ranks start+1 .. end
    result = np.empty(len(values))
    result[order] = np.repeat(mean_ranks, ends - starts)
    return result


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """The probability that a random positive row scores above a random negative one (ties
    count half); None where the rows hold only one side."""
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return None
    rank_sum = ranks(scores.astype(np.float64))[positive].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: of the second class's probability for two classes, else one-vs-rest averaged
    over the classes present (scikit-learn's `multi_class="ovr", average="macro"`); 0.5 when the
    rows hold a single class."""
    classes = probabilities.shape[1]
    if classes == 2:
        value = binary_auc(probabilities[:, 1], labels == 1)
        return 0.5 if value is None else value
    values = [binary_auc(probabilities[:, c], labels == c) for c in range(classes)]
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else 0.5


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions.astype(np.float64) - targets) ** 2)))


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.abs(predictions.astype(np.float64) - targets)))


def r2(predictions: np.ndarray, targets: np.ndarray) -> float:
    """1 - residual / total sum of squares; 0 for constant targets predicted exactly."""
    residual = float(np.sum((targets - predictions.astype(np.float64)) ** 2))
    total = float(np.sum((targets - np.mean(targets)) ** 2))
    if total == 0:
        return 0.0 if residual == 0 else -np.inf
    return 1.0 - residual / total


def mean_squared_error(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean((predictions.astype(np.float64) - targets) ** 2))


FUNCTIONS: dict[Task, dict[str, ScoreFunction]] = {
    "classification": {
        "loss": cross_entropy,
        "acc": accuracy,
        "macro_f1": macro_f1,
        "auc": roc_auc,
    },
    "regression": {"loss": mean_squared_error, "rmse": rmse, "mae": mae, "r2": r2},
}
assert all(set(FUNCTIONS[task]) == {s.name for s in SCORES.values() if task in s.tasks}
           for task in FUNCTIONS)  # fmt: skip


# The user's metrics function (`metrics: pkg.mod:score`): outputs, targets -> {key: value}.
UserScores = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


def score_function(task: Task, name: str, user: UserScores | None = None) -> ScoreFunction:
    """The function of one score of this task: ours (`acc`, `rmse`, ...), or a key of the
    user's metrics function."""
    if name in FUNCTIONS[task] or user is None:
        return FUNCTIONS[task][name]
    return lambda outputs, targets: user_scores(user, outputs, targets)[name]


def user_scores(user: UserScores, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The user's scores of these outputs, checked: a mapping of names to numbers."""
    where = f"metrics {getattr(user, '__module__', '?')}:{getattr(user, '__name__', '?')}"
    scored = user(outputs, targets)
    if not isinstance(scored, Mapping):
        raise TypeError(f"{where} returned a {type(scored).__name__}, not a dict of scores")
    try:
        return {str(key): float(value) for key, value in scored.items()}
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} returned a score that is not a number ({exc})") from None


def all_scores(
    task: Task, outputs: np.ndarray, targets: np.ndarray, user: UserScores | None = None
) -> dict[str, float]:
    """Every score of the task, by its bare name (`acc`, `loss`, ...), and the user's."""
    ours = {name: function(outputs, targets) for name, function in FUNCTIONS[task].items()}
    theirs = {} if user is None else user_scores(user, outputs, targets)
    return {**theirs, **ours}  # a key of ours keeps its meaning


def resamples(rows: int, draws: int = BOOTSTRAP_DRAWS) -> np.ndarray:
    """Seeded bootstrap resamples of `rows` rows, (draws, rows): the same for every model scored
    on the same rows, so that two models' resampled scores pair up."""
    return np.random.default_rng(BOOTSTRAP_SEED).integers(0, rows, size=(draws, rows))


def bootstrap_interval(
    function: ScoreFunction, outputs: np.ndarray, targets: np.ndarray
) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of a score on rows like these."""
    if len(targets) == 0:
        return float("nan"), float("nan")
    values = [function(outputs[draw], targets[draw]) for draw in resamples(len(targets))]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def paired_difference_interval(
    function: ScoreFunction,
    first: np.ndarray,
    second: np.ndarray,
    targets: np.ndarray,
) -> tuple[float, float]:
    """The 95% paired-bootstrap interval of score(first) - score(second) on the same rows: each
    resample scores both models on the same rows, so what the rows share cancels out."""
    if len(targets) == 0:
        return float("nan"), float("nan")
    differences = [
        function(first[draw], targets[draw]) - function(second[draw], targets[draw])
        for draw in resamples(len(targets))
    ]
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return float(low), float(high)
