"""Examples and a seeded, stratified split of them (train / validation / test, or k folds of
train + validation); the split's fingerprint; what a trial may see.

An example is one flat row of raw float32 features, whatever its `input_shape`. The rows are
held in memory (and travel to trials through Ray's object store), or read on demand from a
map-style torch Dataset that each process builds by calling the loader again (`ExampleSource`),
so that only labels and row indices travel. Each model standardizes with statistics of its own
training rows (`model.Standardize`), so scaling can never see validation or test rows and
travels with the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.config.door import import_callable
from pipeline.config.metrics import Task
from pipeline.core.table_encoding import CATEGORY, NUMBER
from pipeline.errors import PipelineError

# Rows of the training rows read to estimate scaling statistics when examples are read on
# demand: enough for a mean and std within a few percent, at a bounded cost per sweep.
STATS_SAMPLE = 2048


@dataclass(frozen=True)
class TableColumn:
    """One feature column of a table: a number, or a category with its vocabulary (every value
    it takes in the file, sorted; a row's feature is the code of its value in it)."""

    name: str
    categories: tuple[str, ...] | None = None  # None: a number column

    def spec(self) -> dict[str, Any]:
        """As `table_encoding` and a registered model's metadata take it."""
        if self.categories is None:
            return {"name": self.name, "kind": NUMBER}
        return {"name": self.name, "kind": CATEGORY, "categories": list(self.categories)}


@dataclass(frozen=True)
class TableLayout:
    """How a table's encoded rows (`table_encoding.encode_frame`) become a network's input: each
    number one input, each category one-hot (at most `one_hot_max` values) or embedded."""

    columns: tuple[TableColumn, ...]
    one_hot_max: int
    imputes: bool  # gaps are filled inside the model (data.missing: impute)

    @property
    def category_columns(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.categories is not None]

    def embedding_size(self, categories: int) -> int:
        """Inputs an embedded category gets: fast.ai's rule of thumb, 1.6 * n ** 0.56, at most
        16 (and never more than its values)."""
        return int(min(16, categories, max(2, round(1.6 * categories**0.56))))

    def width(self, column: TableColumn) -> int:
        """The inputs one column becomes."""
        if column.categories is None:
            return 1
        count = len(column.categories)
        return count if count <= self.one_hot_max else self.embedding_size(count)

    @property
    def encoded_width(self) -> int:
        return sum(self.width(c) for c in self.columns)


@dataclass(frozen=True)
class TableFit:
    """What a table model learns from its own training rows before any weight: each column's
    fill for a gap (a number's median, a category's most frequent code), each number's mean and
    std, and which codes of each category its rows hold (another counts as unknown)."""

    fill: np.ndarray  # float32, one per column
    mean: np.ndarray  # float32, one per column (0 for a category)
    std: np.ndarray  # float32, one per column (1 for a category)
    seen: tuple[np.ndarray, ...]  # per category column: bool per code


def fit_table(rows: np.ndarray, layout: TableLayout) -> TableFit:
    """A table model's `TableFit` from its training rows (encoded, gaps NaN)."""
    columns = len(layout.columns)
    fill = np.zeros(columns, np.float32)
    mean = np.zeros(columns, np.float32)
    std = np.ones(columns, np.float32)
    seen = []
    for i, column in enumerate(layout.columns):
        values = rows[:, i]
        present = values[~np.isnan(values)]
        if column.categories is None:
            if len(present):
                fill[i] = np.median(present)
                mean[i], spread = present.mean(), present.std()
                std[i] = spread if spread > 1e-8 else 1.0
            continue
        codes = present.astype(np.int64)
        counts = np.bincount(codes, minlength=len(column.categories) + 1)
        fill[i] = int(np.argmax(counts[:-1])) if counts[:-1].any() else 0
        seen.append(counts[:-1] > 0)
    return TableFit(fill=fill, mean=mean, std=std, seen=tuple(seen))


@dataclass(frozen=True)
class ModelSpec:
    """What a builder is told about the data: one example's shape (without the batch
    dimension), the number of outputs (one per class; one for a regression), and the classes'
    names (none for a regression)."""

    input_shape: tuple[int, ...]
    num_outputs: int
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None = None
    task: Task = "classification"
    # A table's: how its raw columns become the builder's `input_shape[0]` inputs (inside the
    # network, before the builder's module).
    table: TableLayout | None = None


def example_of(item: Any) -> Any:
    """The features of a Dataset item: the item, or the first element of a tuple item."""
    return item[0] if isinstance(item, (tuple, list)) else item


def features_of(output: Any) -> Any:
    """The features a loader returned: its `features` key, or the first of its pair."""
    return output["features"] if isinstance(output, Mapping) else output[0]


# Each process builds a loader's Dataset once per loader and arguments.
_OPENED: dict[str, Any] = {}


@dataclass(frozen=True, kw_only=True)
class ExampleSource:
    """Examples read on demand from the map-style Dataset that `loader(**args)` returns; our
    row i is its item `items[i]` (all of them, in order, when `items` is None)."""

    loader: str  # module:function, imported through the door (already on the path)
    args: Mapping[str, Any] = field(default_factory=dict)
    items: np.ndarray | None = None
    content_hash: str = ""  # of every example, from the driver's scan (`loaders.scan_examples`)
    length: int = 0  # how many examples the loader's Dataset held on the driver

    @property
    def key(self) -> str:
        return f"{self.loader}|{json.dumps(self.args, sort_keys=True, default=str)}"

    def dataset(self) -> Any:
        """The loader's Dataset, built once in this process."""
        if self.key not in _OPENED:
            load = import_callable(self.loader, (), "data.loader")
            dataset = features_of(load(**self.args))
            if len(dataset) != self.length:  # another node's copy of the files, or none
                raise PipelineError(
                    f"data.loader {self.loader}: its Dataset holds {len(dataset)} examples here, "
                    f"{self.length} on the driver; every node must read the same data (shared "
                    "storage, absolute paths)"
                )
            _OPENED[self.key] = dataset
        return _OPENED[self.key]

    def remember(self, dataset: Any) -> None:
        """The Dataset this process already built for this loader and arguments."""
        _OPENED[self.key] = dataset

    def subset(self, rows: np.ndarray) -> ExampleSource:
        """The source of these rows only, in this order."""
        return replace(self, items=self.item_indices(rows))

    def item_indices(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows) if self.items is None else self.items[rows]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """These rows as flat float32 feature rows."""
        dataset = self.dataset()
        items = self.item_indices(rows)
        if len(items) == 0:
            return np.zeros((0, 0), np.float32)
        return np.stack([flat_example(dataset[int(i)]) for i in items])


def flat_example(item: Any) -> np.ndarray:
    """A Dataset item's features as one flat float32 row."""
    return np.asarray(example_of(item), dtype=np.float32).reshape(-1)


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """All examples of a data set: raw float32 feature rows (in memory, or read on demand
    through `examples`) and their targets: integer labels indexing `class_names`, or a
    regression's float64 values (and no class names)."""

    name: str
    features: np.ndarray | None  # (rows, prod(input_shape)); None: read through `examples`
    labels: np.ndarray
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # one example's shape, e.g. (1, 8, 8) or (13,)
    examples: ExampleSource | None = None
    test_rows: np.ndarray | None = None  # the data set's own test split (MNIST's t10k)
    feature_names: tuple[str, ...] = ()  # column names; empty: feature_0, feature_1, ...
    task: Task = "classification"
    # A table's columns (csv, parquet): `features` holds numbers and category codes, gaps NaN;
    # `raw` the feature columns as the file holds them (what a registered table model takes).
    table: TableLayout | None = None
    raw: pd.DataFrame | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stratified(self) -> bool:
        """Whether splits keep each class's share (classification) or draw rows plainly."""
        return self.task == "classification"

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def columns(self) -> tuple[str, ...]:
        """One name per feature: the file's column names, else feature_0, feature_1, ..."""
        return self.feature_names or tuple(f"feature_{i}" for i in range(self.num_features))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            input_shape=self.input_shape if self.table is None else (self.table.encoded_width,),
            num_outputs=self.num_classes if self.task == "classification" else 1,
            class_names=self.class_names,
            feature_names=self.feature_names or None,
            task=self.task,
            table=self.table,
        )

    def model_inputs(self, index: np.ndarray) -> np.ndarray | pd.DataFrame:
        """These rows as a registered model takes them: a table's as its file holds them, any
        other's as flat features."""
        if self.raw is not None:
            return self.raw.iloc[index].reset_index(drop=True)
        return self.rows(index)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """These rows' flat features, read from memory or from the examples' Dataset."""
        if self.features is not None:
            rows: np.ndarray = self.features[index]
            return rows
        assert self.examples is not None
        return self.examples.read(index)

    def content(self) -> list[np.ndarray]:
        """What identifies the examples, for fingerprints."""
        if self.features is not None:
            return [self.features, self.labels]
        assert self.examples is not None
        return [np.frombuffer(self.examples.content_hash.encode(), np.uint8), self.labels]


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

    features: np.ndarray | None  # the rows in memory, or None: read through `examples`
    examples: ExampleSource | None  # of these rows only, in this order
    labels: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    spec: ModelSpec
    # Per fold: (mean, std) of its training rows, computed once for the sweep, not per trial.
    fold_stats: tuple[tuple[np.ndarray, np.ndarray], ...]
    # Per fold, for a regression: (mean, std) of its training rows' targets, which the model
    # learns standardized and un-scales in its last layer (see `model.build_network`).
    target_stats: tuple[tuple[float, float], ...] = ()
    table_fits: tuple[TableFit, ...] = ()  # per fold, for a table (see `fit_table`)


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
    """A subset of `limit` rows, stratified for classification (the data set's own test rows
    keep their share)."""
    if limit >= len(dataset.labels):
        return dataset
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(len(dataset.labels)),
        train_size=limit,
        stratify=dataset.labels if dataset.stratified else None,
        random_state=seed,
    )
    rows = np.sort(rows)
    test_rows = None
    if dataset.test_rows is not None:
        test_rows = np.flatnonzero(np.isin(rows, dataset.test_rows))
    return replace(
        dataset,
        features=None if dataset.features is None else dataset.features[rows],
        examples=None if dataset.examples is None else dataset.examples.subset(rows),
        raw=None if dataset.raw is None else dataset.raw.iloc[rows].reset_index(drop=True),
        labels=dataset.labels[rows],
        test_rows=test_rows,
    )


def split_dataset(dataset: Dataset, config: DataConfig, seed: int) -> Split:
    """Seeded train / validation / test split, or k folds over train + validation; stratified
    for classification."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(dataset.labels))
    labels = dataset.labels
    strata = labels if dataset.stratified else None
    if dataset.stratified:
        counts = np.bincount(labels)
        if counts[counts > 0].min() < 3:
            raise PipelineError(f"{dataset.name}: every class needs at least 3 examples to split")
    try:
        if dataset.test_rows is not None and len(dataset.test_rows):
            test = np.sort(dataset.test_rows)
            rest = np.setdiff1d(rows, test)
        else:
            rest, test = train_test_split(
                rows, test_size=config.test_fraction, stratify=strata, random_state=seed
            )
        val_share = config.val_fraction / (1 - config.test_fraction)
        train, val = train_test_split(
            rest,
            test_size=val_share,
            stratify=None if strata is None else labels[rest],
            random_state=seed,
        )
    except ValueError as exc:
        raise PipelineError(f"{dataset.name}: cannot split {len(rows)} rows: {exc}") from None
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    if config.cv_folds:
        pool = np.concatenate([train, val])
        if dataset.stratified:
            pooled = np.bincount(labels[pool], minlength=dataset.num_classes)
            smallest = int(np.argmin(np.where(pooled > 0, pooled, np.iinfo(np.int64).max)))
            if pooled[smallest] < config.cv_folds:
                raise PipelineError(
                    f"{dataset.name}: data.cv_folds is {config.cv_folds} but class "
                    f"'{dataset.class_names[smallest]}' has only {pooled[smallest]} rows for "
                    "train + validation; lower cv_folds or add rows"
                )
        folds = draw_folds(
            labels[pool], config.cv_folds, len(val), seed, stratified=dataset.stratified
        )
    else:
        folds = ((np.arange(len(train)), np.arange(len(train), len(train) + len(val))),)
    hashed = [*dataset.content(), train, val, test, *(r for f in folds for r in f)]
    return Split(train=train, val=val, test=test, folds=folds, fingerprint=fingerprint(hashed))


def draw_folds(
    labels: np.ndarray, cv_folds: int | None, val_rows: int, seed: int, *, stratified: bool
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Seeded folds over rows with these labels (stratified by them for classification):
    `cv_folds` of them, or without cross-validation one (train, validation) pair with
    `val_rows` validation rows."""
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    rows = np.arange(len(labels))
    if cv_folds:
        kind = StratifiedKFold if stratified else KFold
        folder = kind(cv_folds, shuffle=True, random_state=seed)
        return tuple((a, b) for a, b in folder.split(rows, labels))
    train, val = train_test_split(
        rows, test_size=val_rows, stratify=labels if stratified else None, random_state=seed
    )
    return ((np.sort(train), np.sort(val)),)


# Folds of a second opinion on a space with one validation split: over its training rows only.
SECOND_OPINION_FOLDS = 3


def refolded(dataset: Dataset, split: Split, config: DataConfig, seed: int) -> TuningData:
    """Folds for a second opinion on a configuration the sweep chose, drawn with another `seed`.

    With cross-validation (`cv_folds`), every tuning row scored the sweep's trials, so the second
    opinion takes them all again, in fresh folds of the same count and sizes. With one
    validation split, the sweep chose on its validation rows: a score on them, or on folds that
    share them, keeps the winner's luck (a single-split digits space overstated test accuracy by
    0.8-1.4 points so). There the second opinion is cross-validated on the training rows alone
    (`SECOND_OPINION_FOLDS` folds), which only fitted models and never chose one."""
    rows = split.tuning_rows
    if config.cv_folds:
        folds = draw_folds(
            dataset.labels[rows], config.cv_folds, 0, seed, stratified=dataset.stratified
        )
    else:  # positions 0 .. len(train)-1 of the tuning rows are the training rows
        folds = draw_folds(
            dataset.labels[split.train],
            SECOND_OPINION_FOLDS,
            0,
            seed,
            stratified=dataset.stratified,
        )
    return tuning_data(dataset, replace(split, folds=folds), shared_scale=config.shared_scale)


def fingerprint(arrays: list[np.ndarray]) -> str:
    """Short hash of the examples and of the split, to tell data sets and splits apart."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def tuning_data(dataset: Dataset, split: Split, *, shared_scale: bool) -> TuningData:
    """The rows a sweep may use (train + validation), with fold indices into them and each fold's
    scaling statistics (`DataConfig.shared_scale`)."""
    rows = split.tuning_rows
    features, examples = None, None
    if dataset.features is not None:
        features = dataset.features[rows]
        stats: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
        if dataset.table is None:  # a table's are its fits' (below)
            stats = tuple(column_stats(features[t], shared_scale) for t, _ in split.folds)
    else:
        assert dataset.examples is not None
        examples = dataset.examples.subset(rows)
        # Read on demand, the statistics come from a seeded sample of the rows, not all of them.
        sample = stats_sample(len(rows))
        sampled = examples.read(sample)
        stats = tuple(
            column_stats(sampled[np.isin(sample, train)], shared_scale) for train, _ in split.folds
        )
    labels = dataset.labels[rows]
    fits: tuple[TableFit, ...] = ()
    if dataset.table is not None:
        assert features is not None  # a table is held in memory
        fits = tuple(fit_table(features[t], dataset.table) for t, _ in split.folds)
        stats = tuple((fit.mean, fit.std) for fit in fits)
    return TuningData(
        features=features,
        examples=examples,
        labels=labels,
        folds=split.folds,
        spec=dataset.spec,
        fold_stats=stats,
        target_stats=tuple(target_stats(labels[t]) for t, _ in split.folds)
        if dataset.task == "regression"
        else (),
        table_fits=fits,
    )


def target_stats(targets: np.ndarray) -> tuple[float, float]:
    """Mean and std of a regression's training targets (std 1 for constant targets)."""
    std = float(np.std(targets))
    return float(np.mean(targets)), std if std > 1e-12 else 1.0


def stats_sample(count: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most STATS_SAMPLE of `count` rows."""
    return np.sort(np.random.default_rng(0).permutation(count)[:STATS_SAMPLE])
