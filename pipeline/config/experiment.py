"""The sections of a search-space file and the whole validated experiment."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config.door import BUILT_IN_BUILDERS
from pipeline.config.metrics import (
    DEFAULT_METRIC,
    Mode,
    Score,
    Task,
    check_metric,
    is_score,
    score_of,
    trial_scores,
)
from pipeline.config.records import ParamSpec, Record, Scalar
from pipeline.config.space import check_optimizer_scoping, check_params, check_point

# A function of the user's code: `package.module:function`.
REFERENCE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# Sources whose features are pixels: one unit, one scale.
IMAGE_SOURCES = ("digits", "mnist", "fashion_mnist", "image_folder")
Source = Literal[
    "digits",
    "wine",
    "breast_cancer",
    "diabetes",
    "mnist",
    "fashion_mnist",
    "csv",
    "parquet",
    "image_folder",
]
# Built-in sources whose target is a quantity; the others' are classes (a table's: either).
REGRESSION_SOURCES = ("diabetes",)
# A file of rows and named columns: numbers, categories (text) and gaps.
TABLE_SOURCES = ("csv", "parquet")


def check_reference(reference: str, key: str) -> None:
    """A function of the user's code is named `package.module:function`."""
    if not re.fullmatch(REFERENCE, reference):
        raise ValueError(
            f"{key}: {reference!r} is not a function reference such as my_models.nets:build "
            "(module path, a colon, the function's name)"
        )


class CodeConfig(Record):
    """The user's code: folders put on the import path of the driver and shipped to every Ray
    worker. Relative paths are relative to the space file (made absolute on loading)."""

    paths: list[str] = Field(default_factory=list)


class DataConfig(Record):
    """Where the examples come from (a built-in source, or the user's loader) and how they are
    split."""

    source: Source | None = None  # unset without a loader: digits
    loader: str | None = None  # "package.module:function"
    args: dict[str, Any] = Field(default_factory=dict)  # the loader's keyword arguments
    # csv/parquet: the file; mnist/fashion_mnist: folder of IDX files (cache); image_folder: the
    # folder of class sub-folders
    path: str | None = None
    target: str | None = None  # csv/parquet: the label column (classes, or a regression's values)
    # csv/parquet: columns that are not features (identifiers, leaks), left out.
    drop_columns: list[str] = Field(default_factory=list)
    # csv/parquet: what a gap in a feature does. refuse: an error naming the columns; drop: rows
    # with a gap are left out (counted in one warning); impute: filled inside the model with the
    # median (numbers) or the most frequent value (categories) of its own training rows. A gap
    # in the target always refuses (or, with drop, drops the row).
    missing: Literal["refuse", "drop", "impute"] = "refuse"
    # csv/parquet: a text column is a category; one with at most this many values is one-hot
    # encoded inside the model, one with more gets a learned embedding.
    one_hot_max: int = Field(default=16, ge=1)
    # image_folder: every image read at this [height, width] (default: the first image's size),
    # with 1 (grey) or 3 (RGB) channels
    image_size: tuple[int, int] | None = None
    channels: Literal[1, 3] = 1
    download: bool = False  # mnist/fashion_mnist: fetch missing IDX files (checksums verified)
    mirror: str | None = None  # base URL to download IDX files from (default: the usual mirror)
    limit: int | None = Field(default=None, ge=10)  # keep a stratified subset of this many rows
    val_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    cv_folds: int | None = Field(default=None, ge=2, le=20)
    # How a model scales its inputs, with statistics of its own training rows: per_feature (each
    # feature its own std), or shared (one std for all, for features in one unit such as pixels).
    # Unset: shared for the image sources (digits, mnist, fashion_mnist), per_feature otherwise;
    # filled in on loading, so the sweep's recorded config says which.
    standardize: Literal["per_feature", "shared"]

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("source") is None and data.get("loader") is None:
            data = {**data, "source": "digits"}
        if data.get("standardize") is None:
            scaling = "shared" if data.get("source") in IMAGE_SOURCES else "per_feature"
            data = {**data, "standardize": scaling}
        return data

    @property
    def shared_scale(self) -> bool:
        """Whether all features are scaled by one std (see `standardize`)."""
        return self.standardize == "shared"

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        if self.loader is not None:
            check_reference(self.loader, "data.loader")
            if self.source is not None:
                raise ValueError("give data.source or data.loader, not both")
            given = [k for k in ("path", "target", "image_size") if getattr(self, k) is not None]
            given += ["drop_columns"] if self.drop_columns else []
            given += ["missing"] if self.missing != "refuse" else []
            if given:
                raise ValueError(
                    f"data.{given[0]} is for built-in sources; a loader takes its own data.args"
                )
            return self
        if self.args:
            raise ValueError("data.args are the keyword arguments of data.loader, which is unset")
        if self.source == "image_folder" and self.path is None:
            raise ValueError("source image_folder needs 'path' (a folder of class sub-folders)")
        if self.source != "image_folder" and (self.image_size is not None or self.channels != 1):
            raise ValueError(
                f"image_size and channels apply to source image_folder, not {self.source}"
            )
        if self.source in TABLE_SOURCES and (self.path is None or self.target is None):
            raise ValueError(
                f"source {self.source} needs 'path' (the file) and 'target' (the label column)"
            )
        if self.source not in TABLE_SOURCES:
            given = [k for k in ("target", "drop_columns") if getattr(self, k)]
            if self.missing != "refuse":
                given.append("missing")
            if given:
                raise ValueError(
                    f"'{given[0]}' only applies to sources csv and parquet, not {self.source}"
                )
        if self.target is not None and self.target in self.drop_columns:
            raise ValueError(f"drop_columns: '{self.target}' is the target")
        return self


class ModelConfig(Record):
    """The network: one of ours by its short name (`family`), or the user's `builder`."""

    family: Literal["mlp", "cnn"] | None = None  # unset without a builder: mlp
    builder: str | None = None  # "package.module:function"

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("family") is None and data.get("builder") is None:
            return {**data, "family": "mlp"}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.family is not None and self.builder is not None:
            raise ValueError("give model.family or model.builder, not both")
        if self.builder is not None:
            check_reference(self.builder, "model.builder")
        return self

    @property
    def builder_reference(self) -> str:
        """The builder as `module:function`, ours included."""
        return self.builder or BUILT_IN_BUILDERS[str(self.family)]

    @property
    def short_name(self) -> str:
        """`mlp`, `cnn`, or the user's builder function's name."""
        return self.family or str(self.builder).rpartition(":")[2]


class BudgetConfig(Record):
    num_samples: int = Field(ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    max_epochs: int = Field(ge=1)  # also ASHA's max_t
    max_failures: int = Field(default=1, ge=0)  # restarts of a crashed trial, from its checkpoint
    # A trial checkpoints at the end of the first epoch this many seconds after its previous
    # checkpoint (or its start); 0: every epoch. A restarted trial or a resumed sweep so loses at
    # most this much training per trial, plus the epoch under way. Ten seconds matches Ray's
    # snapshot of the sweep's state; a checkpoint per epoch cost more than a digits epoch.
    checkpoint_seconds: float = Field(default=10.0, ge=0)


class SearchConfig(Record):
    algorithm: Literal["tpe", "random"] = "tpe"
    # None: sized to the budget (hyperopt's default, 20, makes most small budgets random search).
    n_initial_points: int | None = Field(default=None, ge=1)
    points_to_evaluate: list[dict[str, Scalar]] = Field(default_factory=list)


class SchedulerConfig(Record):
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1.0)


class ResourcesConfig(Record):
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)  # fractions pack several trials on one GPU

    @model_validator(mode="after")
    def _check(self) -> ResourcesConfig:
        if self.gpus > 1 and not self.gpus.is_integer():
            raise ValueError(f"gpus above 1 must be whole, got {self.gpus}")
        return self


class Experiment(Record):
    """A whole validated search-space file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    task: Task = "classification"
    # What the sweep ranks on (config.metrics): unset, val_acc or val_rmse by the task; mode,
    # unset, the metric's own direction (given, it must be that direction).
    metric: str
    mode: Mode
    # The user's own scores, `package.module:function`: score(predictions, targets) -> {key:
    # value}, called on each validation fold every epoch and on the test rows; `metric` may name
    # one of its keys as val_<key> (with a mode).
    metrics: str | None = None
    registered_model: str | None = None
    # Validated from no keys, so that its defaults are filled in as a file's would be.
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    model: ModelConfig = Field(default_factory=ModelConfig)
    budget: BudgetConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    code: CodeConfig = Field(default_factory=CodeConfig)
    params: dict[str, ParamSpec]

    @model_validator(mode="before")
    @classmethod
    def _default_metric(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        task = data.get("task", "classification")
        if data.get("metric") is None and task in DEFAULT_METRIC:
            data = {**data, "metric": DEFAULT_METRIC[task]}
        metric = data.get("metric")
        # An unknown metric is refused, with the list of metrics, by `_check`.
        if data.get("mode") is None and isinstance(metric, str):
            if is_score(metric):
                data = {**data, "mode": score_of(metric).mode}
            elif data.get("metrics"):
                raise ValueError(f"mode: give max or min for {metric}, your metrics function's")
        return data

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        if self.metrics is not None:
            check_reference(self.metrics, "metrics")
        check_metric(self.metric, self.mode, self.task, custom=self.metrics)
        source = self.data.source
        if source not in (None, *TABLE_SOURCES) and (source in REGRESSION_SOURCES) != (
            self.task == "regression"
        ):
            kind = "regression" if source in REGRESSION_SOURCES else "classification"
            raise ValueError(f"task: data.source {source} is a {kind} set, not {self.task}")
        if self.model.family == "cnn" and self.data.source in (
            *TABLE_SOURCES,
            "wine",
            "breast_cancer",
            *REGRESSION_SOURCES,
        ):
            raise ValueError(f"model.family: cnn needs image data; {self.data.source} is tabular")
        if self.scheduler.grace_period > self.budget.max_epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds "
                f"budget.max_epochs ({self.budget.max_epochs})"
            )
        check_params(self.params, epochs_cap=self.budget.max_epochs, task=self.task)
        check_optimizer_scoping(self.params)
        if self.search.algorithm == "tpe" and self.n_initial_points >= self.budget.num_samples:
            raise ValueError(
                f"search.n_initial_points ({self.n_initial_points}) must be below "
                f"budget.num_samples ({self.budget.num_samples}), or TPE never runs"
            )
        for i, point in enumerate(self.search.points_to_evaluate):
            check_point(self.params, point, f"search.points_to_evaluate[{i}]")
        return self

    @property
    def score(self) -> Score:
        """What the sweep ranks on: one of our scores, or a key of the user's metrics."""
        return score_of(self.metric, self.mode)

    @property
    def trial_scores(self) -> tuple[str, ...]:
        """What each epoch of a trial records: `train_loss`, the task's `val_<score>`s and the
        user's metric if it is one."""
        ours = trial_scores(self.task)
        return ours if self.metric in ours else (*ours, self.metric)

    @property
    def n_initial_points(self) -> int:
        """Random trials before TPE models the results; all of them for random search."""
        if self.search.algorithm == "random":
            return self.budget.num_samples
        if self.search.n_initial_points is not None:
            return self.search.n_initial_points
        # A quarter of the budget, at least 2 (TPE needs some spread) and at most hyperopt's 20,
        # leaving at least one trial to TPE.
        return max(1, min(max(2, self.budget.num_samples // 4), 20, self.budget.num_samples - 1))

    @property
    def model_name(self) -> str:
        """Registered-model name: from the file, else derived from the data set and the model
        (`digits-mlp`), or the space's name for the user's loader."""
        if self.registered_model:
            return self.registered_model
        if self.data.source is None or self.data.source in TABLE_SOURCES:
            return self.name
        return f"{self.data.source}-{self.model.short_name}"
