"""Inputs for a registered model (CSV, .npy or a folder of images) and its predictions as CSV."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config.door import import_callable
from pipeline.config.metrics import TEST_PREFIX, Mode, Task, score_of
from pipeline.core.data import Dataset, Split
from pipeline.core.images import read_image
from pipeline.core.metrics import UserScores, score_function
from pipeline.core.sources import FLOAT32_MAX, check_feature_columns, read_rows, read_table
from pipeline.core.table_encoding import CATEGORY, canonical_text, missing_columns
from pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class Inputs:
    """Feature rows ready for the model, an id per row, and true labels where the input had them."""

    features: np.ndarray | pd.DataFrame  # float32 (rows, features), or a table's rows as they are
    ids: list[str]
    labels: list[str] | None = None  # class names or values, from a `label` (or target) column


def read_inputs(path: Path, metadata: dict[str, Any]) -> Inputs:
    """Read a CSV with the training feature columns, an .npy array, or a folder of images; for
    a table model, a CSV or Parquet file as the user has it."""
    if path.is_dir():
        return read_images(path, metadata)
    if not path.exists():
        raise PipelineError(f"{path}: no such file or folder")
    if metadata.get("table") and path.suffix in (".csv", ".parquet"):
        return read_table_inputs(path, metadata)
    if path.suffix == ".npy":
        return read_npy(path, metadata)
    if path.suffix == ".csv":
        return read_csv(path, metadata)
    raise PipelineError(f"{path}: unsupported input (give a .csv, a .npy or a folder of images)")


def read_csv(path: Path, metadata: dict[str, Any]) -> Inputs:
    """Columns named as in training (any order; others ignored); a `label` column is kept."""
    frame = read_table(path)
    names: list[str] = metadata["feature_names"]
    absent = missing_columns(frame, names)
    if absent:
        raise PipelineError(f"{path}: {absent}")
    check_feature_columns(frame, names, path)
    labels = None
    if LABEL_COLUMN in frame.columns:
        labels = [str(v) for v in frame[LABEL_COLUMN]]
    ids = [str(i) for i in range(len(frame))]
    return Inputs(frame[names].to_numpy(np.float32), ids, labels)


def read_table_inputs(path: Path, metadata: dict[str, Any]) -> Inputs:
    """A table as the user has it, for a table model: its feature columns by name (others
    ignored; category columns read as text, gaps kept), and its target (by the name it had in
    training, or `label`) kept to score the predictions."""
    columns: list[dict[str, Any]] = metadata["table"]["columns"]
    text: dict[str, type] = {c["name"]: str for c in columns if c["kind"] == CATEGORY}
    if path.suffix == ".parquet":
        frame = read_rows(path, "parquet")
    else:
        frame = read_table(path, dtype=text)
    absent = missing_columns(frame, [c["name"] for c in columns])
    if absent:
        raise PipelineError(f"{path}: {absent}")
    target = (metadata.get("data") or {}).get("target")
    labelled = next((c for c in (target, LABEL_COLUMN) if c and c in frame.columns), None)
    labels = None if labelled is None else [canonical(v) for v in frame[labelled]]
    names = [c["name"] for c in columns]
    return Inputs(frame[names], [str(i) for i in range(len(frame))], labels)


def canonical(value: Any) -> str:
    text = canonical_text(value)
    return "" if text is None else text


def read_npy(path: Path, metadata: dict[str, Any]) -> Inputs:
    """Rows of features, or images whose pixels flatten to the model's feature count."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: cannot read as .npy: {exc}") from None
    expected = len(metadata["feature_names"])
    if array.ndim < 2 or int(np.prod(array.shape[1:])) != expected:
        raise PipelineError(
            f"{path}: array of shape {array.shape}; the model takes rows of {expected} features"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise PipelineError(f"{path}: array of {array.dtype}, not real numbers")
    rows = array.reshape(len(array), expected).astype(np.float64)
    bad = ~np.isfinite(rows) | (np.abs(rows) > FLOAT32_MAX)
    if bad.any():
        first = int(np.flatnonzero(bad.any(axis=1))[0])
        raise PipelineError(
            f"{path}: {int(bad.sum())} values are NaN, infinite or beyond float32's range "
            f"(first in row {first}); the model needs finite numbers"
        )
    features = rows.astype(np.float32)
    return Inputs(features, [str(i) for i in range(len(array))])


def read_images(folder: Path, metadata: dict[str, Any]) -> Inputs:
    """Images resized to the training size (grey or RGB, as the model was trained), pixels
    mapped to the training range.

    Images are expected as the training data show them (for MNIST and digits: light strokes on
    a dark background).
    """
    # Versions registered before input shapes were recorded name only an image's shape.
    shape = metadata.get("input_shape") or metadata.get("image_shape")
    if not shape or len(shape) != 3 or shape[0] not in (1, 3):
        raise PipelineError(
            f"{folder}: this model takes examples shaped {shape or 'as rows'}, not images"
        )
    channels, height, width = shape
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PipelineError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    low, high = metadata["feature_range"]
    rows = []
    for file in files:
        pixels = read_image(file, (height, width), channels).reshape(-1)
        rows.append(low + pixels / 255.0 * (high - low))
    return Inputs(np.stack(rows), [f.name for f in files])


def predictions_frame(outputs: np.ndarray, class_names: list[str], inputs: Inputs) -> pd.DataFrame:
    """id, predicted label, its probability, one probability column per class (and the label);
    for a regression (no classes), id and the predicted value in the target's units."""
    if not class_names:
        frame = pd.DataFrame({"id": inputs.ids, "prediction": outputs.reshape(-1)})
        if inputs.labels is not None:
            frame[LABEL_COLUMN] = inputs.labels
        return frame
    probabilities = outputs
    best = probabilities.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "id": inputs.ids,
            "prediction": [class_names[i] for i in best],
            "probability": probabilities[np.arange(len(best)), best],
        }
    )
    for i, name in enumerate(class_names):
        frame[f"p_{name}"] = probabilities[:, i]
    if inputs.labels is not None:
        frame[LABEL_COLUMN] = inputs.labels
    return frame


@dataclass(frozen=True)
class Scoring:
    """How a registered version is scored, from its metadata: its task, the metric its sweep
    ranked on (in `mode`) and the user's metrics function, if it had one (imported from the
    version's code paths)."""

    task: Task
    metric: str
    mode: Mode
    user: UserScores | None

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> Scoring:
        # Versions registered before these were recorded: classifiers ranked on val_acc.
        task: Task = "regression" if metadata.get("task") == "regression" else "classification"
        metric = str(metadata.get("metric") or "val_acc")
        mode: Mode = metadata.get("mode") or score_of(metric).mode
        user = None
        if metadata.get("metrics"):
            paths = metadata.get("code_paths") or []
            user = import_callable(str(metadata["metrics"]), paths, "metrics")
        return cls(task, metric, mode, user)


def labelled_score(
    outputs: np.ndarray, metadata: dict[str, Any], inputs: Inputs
) -> tuple[str, float] | None:
    """The sweep's metric's test score (`test_acc`, `test_rmse`, ...) on the rows of the input
    whose label (its `label` or target column) is given, if any: its name and value."""
    present = [i for i, label in enumerate(inputs.labels or []) if label not in ("", "nan")]
    if inputs.labels is None or not present:
        return None
    given = [inputs.labels[i] for i in present]
    scoring = Scoring.of(metadata)
    score = score_of(scoring.metric, scoring.mode)
    function = score_function(scoring.task, score.name, scoring.user)
    if scoring.task == "regression":
        try:
            targets = np.array([float(v) for v in given])
        except ValueError as exc:
            raise PipelineError(f"the labels: {exc}; a regression's must be numbers") from None
        return TEST_PREFIX + score.name, function(outputs.reshape(-1)[present], targets)
    index = {name: i for i, name in enumerate(metadata["class_names"])}
    unknown = sorted({v for v in given if v not in index})
    if unknown:
        raise PipelineError(
            f"column '{LABEL_COLUMN}': {unknown[0]!r} is not one of the model's classes "
            f"({', '.join(index)})"
        )
    labels = np.array([index[v] for v in given])
    return TEST_PREFIX + score.name, function(outputs[present], labels)


def held_out_rows(dataset: Dataset, split: Split) -> pd.DataFrame:
    """The test split as a CSV-ready frame: the feature columns (a table's as its file holds
    them) and the label (class name, or a regression's value)."""
    inputs = dataset.model_inputs(split.test)
    frame = (
        inputs
        if isinstance(inputs, pd.DataFrame)
        else pd.DataFrame(inputs, columns=list(dataset.columns))
    )
    targets = dataset.labels[split.test]
    frame[LABEL_COLUMN] = (
        [dataset.class_names[i] for i in targets] if dataset.class_names else targets
    )
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write next to `path`, then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            frame.to_csv(stream, index=False)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
