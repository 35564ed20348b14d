"""The sections of a search-space file and the whole validated experiment."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config.records import ParamSpec, Record, Scalar
from pipeline.config.space import check_optimizer_scoping, check_params, check_point

# Sources whose features are pixels: one unit, one scale.
IMAGE_SOURCES = ("digits", "mnist", "fashion_mnist")


class DataConfig(Record):
    """Where the examples come from and how they are split."""

    source: Literal["digits", "wine", "breast_cancer", "mnist", "fashion_mnist", "csv"] = "digits"
    path: str | None = None  # csv: the file; mnist/fashion_mnist: folder of IDX files (cache)
    target: str | None = None  # csv: the label column
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
    def _default_standardize(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("standardize") is None:
            source = data.get("source", cls.model_fields["source"].default)
            scaling = "shared" if source in IMAGE_SOURCES else "per_feature"
            return {**data, "standardize": scaling}
        return data

    @property
    def shared_scale(self) -> bool:
        """Whether all features are scaled by one std (see `standardize`)."""
        return self.standardize == "shared"

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        if self.source == "csv" and (self.path is None or self.target is None):
            raise ValueError("source csv needs 'path' (the file) and 'target' (the label column)")
        if self.source != "csv" and self.target is not None:
            raise ValueError(f"'target' only applies to source csv, not {self.source}")
        return self


class ModelConfig(Record):
    family: Literal["mlp", "cnn"] = "mlp"


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
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    registered_model: str | None = None
    # Validated from no keys, so that its defaults are filled in as a file's would be.
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    model: ModelConfig = Field(default_factory=ModelConfig)
    budget: BudgetConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    params: dict[str, ParamSpec]

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        expected_mode = "max" if self.metric == "val_acc" else "min"
        if self.mode != expected_mode:
            raise ValueError(f"mode: {self.metric} is optimised with mode {expected_mode}")
        if self.model.family == "cnn" and self.data.source in ("csv", "wine", "breast_cancer"):
            raise ValueError(f"model.family: cnn needs image data; {self.data.source} is tabular")
        if self.scheduler.grace_period > self.budget.max_epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds "
                f"budget.max_epochs ({self.budget.max_epochs})"
            )
        check_params(self.params, epochs_cap=self.budget.max_epochs)
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
        """Registered-model name: from the file, else derived from data set and model family."""
        return self.registered_model or f"{self.data.source}-{self.model.family}"
