"""Examples in memory and a seeded, stratified split of them (train / validation / test, or k
folds of train + validation); the split's fingerprint; what a trial may see.

Features stay raw (float32); each model standardizes with statistics of its own training rows
(`model.Standardize`), so scaling can never see validation or test rows and travels with the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import PipelineError


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """All examples of a data set: raw float32 features (rows flattened) and integer labels."""

    name: str
    features: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) for images
    test_rows: np.ndarray | None = None  # the data set's own test split (MNIST's t10k)
    feature_names: tuple[str, ...] = ()  # column names; empty: feature_0, feature_1, ...

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def columns(self) -> tuple[str, ...]:
        """One name per feature: the file's column names, else feature_0, feature_1, ..."""
        return self.feature_names or tuple(f"feature_{i}" for i in range(self.features.shape[1]))


@dataclass(frozen=True, kw_only=True)
class Split:
    """Row indices into a Dataset. `folds` index into `tuning_rows` (train + validation)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    fingerprint: str

    @property
    def tuning_rows(self) -> np.ndarray:
        return np.concatenate([self.train, self.val])


@dataclass(frozen=True, kw_only=True)
class TuningData:
    """What a trial may see: the train and validation rows only, never the test split."""

    features: np.ndarray
    labels: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    num_classes: int
    image_shape: tuple[int, int, int] | None
    # Per fold: (mean, std) of its training rows, computed once for the sweep, not per trial.
    fold_stats: tuple[tuple[np.ndarray, np.ndarray], ...]


def column_stats(features: np.ndarray, shared_scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float32) of the given rows.

    Without `shared_scale` each feature gets its own std (a constant feature std 1). With it every
    feature gets one std, the root mean square of their stds (the centred inputs then have unit
    variance overall; 1 if all are constant), so features in one unit, such as pixels, keep their
    relative scale: a rarely inked border pixel is not blown up to the variance of a central one.
    """
    mean = features.mean(axis=0, dtype=np.float64)
    std = features.std(axis=0, dtype=np.float64)
    if shared_scale:
        std = np.full_like(std, np.sqrt(np.mean(std**2)))
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def subset(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """A stratified subset of `limit` rows (the data set's own test rows keep their share)."""
    if limit >= len(dataset.labels):
        return dataset
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(len(dataset.labels)), train_size=limit, stratify=dataset.labels, random_state=seed
    )
    rows = np.sort(rows)
    test_rows = None
    if dataset.test_rows is not None:
        test_rows = np.flatnonzero(np.isin(rows, dataset.test_rows))
    return Dataset(
        name=dataset.name,
        features=dataset.features[rows],
        labels=dataset.labels[rows],
        class_names=dataset.class_names,
        image_shape=dataset.image_shape,
        test_rows=test_rows,
        feature_names=dataset.feature_names,
    )


def split_dataset(dataset: Dataset, config: DataConfig, seed: int) -> Split:
    """Seeded, stratified train / validation / test split, or k folds over train + validation."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(dataset.labels))
    labels = dataset.labels
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 3:
        raise PipelineError(f"{dataset.name}: every class needs at least 3 examples to split")
    try:
        if dataset.test_rows is not None and len(dataset.test_rows):
            test = np.sort(dataset.test_rows)
            rest = np.setdiff1d(rows, test)
        else:
            rest, test = train_test_split(
                rows, test_size=config.test_fraction, stratify=labels, random_state=seed
            )
        val_share = config.val_fraction / (1 - config.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise PipelineError(f"{dataset.name}: cannot split {len(rows)} rows: {exc}") from None
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    if config.cv_folds:
        pool = np.concatenate([train, val])
        pooled = np.bincount(labels[pool], minlength=dataset.num_classes)
        smallest = int(np.argmin(np.where(pooled > 0, pooled, np.iinfo(np.int64).max)))
        if pooled[smallest] < config.cv_folds:
            raise PipelineError(
                f"{dataset.name}: data.cv_folds is {config.cv_folds} but class "
                f"'{dataset.class_names[smallest]}' has only {pooled[smallest]} rows for train + "
                "validation; lower cv_folds or add rows"
            )
        folds = draw_folds(labels[pool], config.cv_folds, len(val), seed)
    else:
        folds = ((np.arange(len(train)), np.arange(len(train), len(train) + len(val))),)
    hashed = [dataset.features, dataset.labels, train, val, test, *(r for f in folds for r in f)]
    return Split(train=train, val=val, test=test, folds=folds, fingerprint=fingerprint(hashed))


def draw_folds(
    labels: np.ndarray, cv_folds: int | None, val_rows: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Seeded, stratified folds over rows with these labels: `cv_folds` of them, or without
    cross-validation one (train, validation) pair with `val_rows` validation rows."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    rows = np.arange(len(labels))
    if cv_folds:
        folder = StratifiedKFold(cv_folds, shuffle=True, random_state=seed)
        return tuple((a, b) for a, b in folder.split(rows, labels))
    train, val = train_test_split(rows, test_size=val_rows, stratify=labels, random_state=seed)
    return ((np.sort(train), np.sort(val)),)


def refolded(dataset: Dataset, split: Split, config: DataConfig, seed: int) -> TuningData:
    """The sweep's train + validation rows in fresh folds drawn with another `seed` (the same
    count and sizes): a second opinion on a configuration that no trial's score has seen."""
    rows = split.tuning_rows
    folds = draw_folds(dataset.labels[rows], config.cv_folds, len(split.val), seed)
    return tuning_data(dataset, replace(split, folds=folds), config)


def fingerprint(arrays: list[np.ndarray]) -> str:
    """Short hash of the examples and of the split, to tell data sets and splits apart."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def tuning_data(dataset: Dataset, split: Split, config: DataConfig) -> TuningData:
    """The rows a sweep may use (train + validation), with fold indices into them and each fold's
    scaling statistics (`config.shared_scale`)."""
    rows = split.tuning_rows
    features = dataset.features[rows]
    stats = tuple(column_stats(features[train], config.shared_scale) for train, _ in split.folds)
    return TuningData(
        features=features,
        labels=dataset.labels[rows],
        folds=split.folds,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        fold_stats=stats,
    )
