"""Search-space YAML -> a validated, frozen experiment.

Every entry is a small typed record checked when it is built (after Optuna's distributions): a bad
file fails here, before Ray starts, with one line per problem naming the file and the key.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from pipeline.errors import PipelineError

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu")
# gd is full-batch gradient descent: plain SGD on the whole training split in one step.
OPTIMIZERS = ("gd", "sgd", "momentum", "adam", "adamw", "rmsprop")

Scalar = bool | int | float | str


def did_you_mean(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Record(BaseModel):
    """Frozen record that rejects unknown keys, naming the closest known one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in known:
                    raise ValueError(
                        f"unknown key '{key}'{did_you_mean(str(key), known)}; "
                        f"allowed: {', '.join(known)}"
                    )
        return data


# --- hyperparameter distributions ---------------------------------------------------------------


class FloatParam(Record):
    """A real value drawn from [low, high], uniformly or log-uniformly, optionally on a grid."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        check_bounds(self.low, self.high, self.log, self.step)
        return self


class IntParam(Record):
    """An integer drawn from [low, high] inclusive, uniformly or log-uniformly."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


def check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    """Optuna's rules: low <= high, log needs low > 0, step and log exclusive, step > 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"low and high must be finite, got low={low}, high={high}")
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"log-uniform needs low > 0, got low={low}")
    if step is not None and log:
        raise ValueError("step and log cannot be used together")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")


class ConditionalOption(Record):
    """A choice option with parameters of its own, sampled only when the option is chosen."""

    name: str
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_params(cls, data: Any) -> Any:
        # YAML writes `- {name: momentum, momentum: {...}}`: every key but `name` is a parameter.
        if isinstance(data, dict) and "params" not in data:
            if "name" not in data:
                raise ValueError(f"an option given as a mapping needs a 'name', got {dict(data)}")
            return {"name": data["name"], "params": {k: v for k, v in data.items() if k != "name"}}
        return data


Option = ConditionalOption | Scalar


class ChoiceParam(Record):
    """One of `values`; an option may be a mapping carrying its own conditional parameters."""

    type: Literal["choice"]
    values: list[Option]

    @model_validator(mode="after")
    def _check(self) -> ChoiceParam:
        if not self.values:
            raise ValueError("values must not be empty")
        names = [option_name(v) for v in self.values]
        duplicates = sorted({str(n) for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate values: {', '.join(duplicates)}")
        return self


def option_name(option: Option) -> Scalar:
    """The value an option gives its parameter (its name, for a conditional option)."""
    return option.name if isinstance(option, ConditionalOption) else option


def _param_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
        return kind if kind in ("float", "int", "choice") else None
    if isinstance(raw, BaseModel):
        return str(getattr(raw, "type", "constant"))
    return "constant"


ParamSpec = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[ChoiceParam, Tag("choice")]
    | Annotated[Scalar, Tag("constant")],
    Discriminator(
        _param_kind,
        custom_error_type="invalid_param",
        custom_error_message=(
            "a parameter is a constant or a mapping with type: float, int or choice"
        ),
    ),
]
ConditionalOption.model_rebuild()


# --- what each hyperparameter means ------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameter:
    """The domain of one tunable hyperparameter, used to check every value a space can yield."""

    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    allowed: tuple[str, ...] = ()
    optimizers: tuple[str, ...] = ()  # non-empty: only meaningful for these optimizers

    def check(self, value: Scalar) -> str | None:
        """Why `value` is not valid here, or None."""
        if self.allowed:
            if value not in self.allowed:
                hint = did_you_mean(str(value), self.allowed)
                return f"'{value}' is not one of {', '.join(self.allowed)}{hint}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if self.kind is int and not float(value).is_integer():
            return f"{value} is not an integer"
        if self.low is not None and value < self.low:
            return f"{value} is below the minimum {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            bound = f"below {self.high}" if self.high_open else f"at most {self.high}"
            return f"{value} is out of range: must be {bound}"
        return None


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(float, "learning rate", low=1e-12, high=10.0),
    "optimizer": Hyperparameter(str, "update rule", allowed=OPTIMIZERS),
    "momentum": Hyperparameter(
        float, "SGD momentum", low=0.0, high=1.0, high_open=True, optimizers=("momentum",)
    ),
    "batch_size": Hyperparameter(
        int, "mini-batch size", low=1, optimizers=tuple(o for o in OPTIMIZERS if o != "gd")
    ),
    "weight_decay": Hyperparameter(float, "L2 penalty", low=0.0, high=1.0),
    "dropout": Hyperparameter(float, "dropout probability", low=0.0, high=1.0, high_open=True),
    "label_smoothing": Hyperparameter(
        float, "share of each target spread over all classes", low=0.0, high=1.0, high_open=True
    ),
    "hidden_layers": Hyperparameter(int, "hidden (fully connected) layers", low=0, high=16),
    "hidden_units": Hyperparameter(int, "units per hidden layer", low=1, high=8192),
    "activation": Hyperparameter(str, "non-linearity", allowed=ACTIVATIONS),
    "epochs": Hyperparameter(int, "epochs to train (capped by budget.max_epochs)", low=1),
    "conv_layers": Hyperparameter(int, "convolution blocks (cnn)", low=1, high=4),
    "conv_channels": Hyperparameter(int, "channels of the first block (cnn)", low=1, high=512),
    "kernel_size": Hyperparameter(int, "convolution kernel size (cnn)", low=1, high=7),
}


@dataclass(frozen=True)
class Hyperparameters:
    """One resolved trial configuration; a hyperparameter absent from the space has its default."""

    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    batch_size: int | None = 64  # None: the whole training split (full-batch gradient descent)
    weight_decay: float = 0.0
    dropout: float = 0.0
    label_smoothing: float = 0.0  # of the training loss only; validation scores plain targets
    hidden_layers: int = 1
    hidden_units: int = 128
    activation: str = "relu"
    epochs: int | None = None  # None: budget.max_epochs
    conv_layers: int = 2
    conv_channels: int = 16
    kernel_size: int = 3

    @classmethod
    def from_params(cls, params: dict[str, Scalar]) -> Hyperparameters:
        """Build from the flat parameters of a trial (see `flatten_sample`)."""
        values: dict[str, Any] = dict(params)
        if values.get("optimizer", cls.optimizer) == "gd":
            values["batch_size"] = None
        for f in fields(cls):
            if f.name in values and f.type in ("int", "int | None") and values[f.name] is not None:
                values[f.name] = int(values[f.name])
        return cls(**values)

    def planned_epochs(self, max_epochs: int) -> int:
        """Epochs this configuration trains for when no scheduler stops it."""
        return min(self.epochs or max_epochs, max_epochs)


# --- experiment sections -----------------------------------------------------------------------


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
        check_params(self.params, "params", optimizers=None, epochs_cap=self.budget.max_epochs)
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


def check_params(
    params: dict[str, ParamSpec], where: str, optimizers: tuple[str, ...] | None, epochs_cap: int
) -> None:
    """Check names and every value each parameter can take; `optimizers` scopes a conditional."""
    for name, spec in params.items():
        key = f"{where}.{name}"
        meta = HYPERPARAMETERS.get(name)
        if meta is None:
            raise ValueError(
                f"{key}: unknown hyperparameter '{name}'{did_you_mean(name, list(HYPERPARAMETERS))}"
            )
        if optimizers and meta.optimizers and not set(optimizers) <= set(meta.optimizers):
            raise ValueError(
                f"{key}: does not apply to optimizer {', '.join(optimizers)} "
                f"(only to {', '.join(meta.optimizers)})"
            )
        for value, sub in spec_values(spec):
            problem = meta.check(value)
            if problem is None and name == "epochs" and int(value) > epochs_cap:
                problem = f"{value} exceeds budget.max_epochs ({epochs_cap})"
            if problem:
                raise ValueError(f"{key}{sub}: {problem}")
        if isinstance(spec, FloatParam) and meta.kind is int:
            raise ValueError(f"{key}: {name} is an integer; use type: int")
        if isinstance(spec, ChoiceParam):
            for option in spec.values:
                if isinstance(option, ConditionalOption):
                    if name != "optimizer":
                        raise ValueError(
                            f"{key}: only optimizer options may carry parameters of their own"
                        )
                    check_params(option.params, f"{key}.{option.name}", (option.name,), epochs_cap)


def spec_values(spec: ParamSpec) -> list[tuple[Scalar, str]]:
    """The values to check for a spec, each with the sub-key that names it in errors."""
    if isinstance(spec, (FloatParam, IntParam)):
        return [(spec.low, ".low"), (spec.high, ".high")]
    if isinstance(spec, ChoiceParam):
        return [(option_name(v), f".values[{i}]") for i, v in enumerate(spec.values)]
    return [(spec, "")]


def check_optimizer_scoping(params: dict[str, ParamSpec]) -> None:
    """Optimizer-specific parameters (momentum, batch_size) only where every optimizer uses them."""
    spec = params.get("optimizer", Hyperparameters.optimizer)
    chosen = (
        [str(v) for v, _ in spec_values(spec)]
        if not isinstance(spec, (FloatParam, IntParam))
        else []
    )
    for name in params:
        scope = HYPERPARAMETERS[name].optimizers if name in HYPERPARAMETERS else ()
        misfits = [o for o in chosen if scope and o not in scope]
        if misfits:
            raise ValueError(
                f"params.{name}: does not apply to optimizer {', '.join(misfits)}; "
                f"put it under the optimizer options it applies to ({', '.join(scope)})"
            )
    if isinstance(spec, ChoiceParam):
        for option in spec.values:
            if isinstance(option, ConditionalOption):
                for name in option.params:
                    if name in params:
                        raise ValueError(
                            f"params.optimizer.{option.name}.{name}: also given at the top level"
                        )


def check_point(params: dict[str, ParamSpec], point: dict[str, Scalar], where: str) -> None:
    """A warm-start point must give a value inside the space for every sampled parameter."""
    expected = sampled_names(params, point)
    for key in point:
        if key not in expected:
            raise ValueError(
                f"{where}: '{key}' is not sampled by this space{did_you_mean(key, expected)}"
            )
    for name in expected:
        if name not in point:
            raise ValueError(f"{where}: missing a value for '{name}'")
    for _, name, spec in active_params(params, point):
        value = point[name]
        if isinstance(spec, ChoiceParam):
            if value not in [option_name(v) for v in spec.values]:
                raise ValueError(f"{where}.{name}: {value!r} is not one of the choices")
        elif isinstance(spec, (FloatParam, IntParam)):
            if isinstance(value, (bool, str)) or not spec.low <= value <= spec.high:
                raise ValueError(f"{where}.{name}: {value!r} is outside [{spec.low}, {spec.high}]")
            if isinstance(spec, IntParam) and not float(value).is_integer():
                raise ValueError(f"{where}.{name}: {value!r} is not an integer")


def point_from_values(
    params: dict[str, ParamSpec], values: dict[str, Scalar], where: str
) -> dict[str, Scalar]:
    """The point of this space at which an earlier trial's configuration (its sampled and constant
    values, as in a sweep's trials.csv) sits; a ValueError naming the key when the space no
    longer holds it. Numbers come back as the space's own types (an int choice stays an int)."""
    point = {name: values[name] for name in sampled_names(params, values) if name in values}
    check_point(params, point, where)
    typed: dict[str, Scalar] = {}
    for _, name, spec in active_params(params, point):
        value = point[name]
        if isinstance(spec, ChoiceParam):
            typed[name] = next(o for o in map(option_name, spec.values) if o == value)
        else:
            typed[name] = int(value) if isinstance(spec, IntParam) else float(value)
    return typed


def active_params(
    params: dict[str, ParamSpec], point: dict[str, Scalar], path: str = ""
) -> list[tuple[str, str, ParamSpec]]:
    """The sampled (non-constant) parameters a point sets, following the options it picks, as
    (path, name, spec); `path` names the options above a conditional parameter
    (`optimizer/momentum/`), so that path + name is unique in the space."""
    active: list[tuple[str, str, ParamSpec]] = []
    for name, spec in params.items():
        if isinstance(spec, (FloatParam, IntParam, ChoiceParam)):
            active.append((path, name, spec))
        if isinstance(spec, ChoiceParam):
            for option in spec.values:
                if isinstance(option, ConditionalOption) and point.get(name) == option.name:
                    active.extend(
                        active_params(option.params, point, f"{path}{name}/{option.name}/")
                    )
    return active


def sampled_names(params: dict[str, ParamSpec], point: dict[str, Scalar]) -> list[str]:
    """Names of the parameters a point must give (constants are not sampled)."""
    return [name for _, name, _ in active_params(params, point)]


# --- loading -----------------------------------------------------------------------------------


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override (`key.sub=value`) and validate a search-space file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such search-space file") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder; give a search-space YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of keys at the top level")
    for override in overrides or []:
        apply_override(raw, override, path)
    return parse_experiment(raw, path)


def parse_experiment(raw: dict[str, Any], source: str | Path) -> Experiment:
    """Validate an already-read mapping; `source` names it in errors."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {format_error(e)}" for e in exc.errors()]
        raise PipelineError("\n".join(lines)) from None


def format_error(error: Any) -> str:
    """One pydantic error as 'dotted.key: message', dropping pydantic's union-tag noise."""
    loc = [p for p in error["loc"] if p not in ("float", "int", "choice", "constant")]
    loc = [p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "union[")))]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] not in ("value_error", "invalid_param"):
        message = f"{message} (got {error.get('input')!r})"
    return f"{key}: {message}" if key else message


def apply_override(raw: dict[str, Any], override: str, source: Path) -> None:
    """Set a dotted key to a YAML-parsed value, e.g. `budget.num_samples=4`."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise PipelineError(f"--set {override!r}: expected key=value, e.g. budget.num_samples=4")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PipelineError(f"{source}: --set {key}: '{part}' is not a mapping")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(
            f"--set {override!r}: the value is not valid YAML: {' '.join(str(exc).split())}"
        ) from None


def flatten_sample(sample: dict[str, Any]) -> dict[str, Scalar]:
    """Flatten a sampled config: a chosen conditional option gives its name and its parameters."""
    flat: dict[str, Scalar] = {}
    for name, value in sample.items():
        if isinstance(value, dict):
            inner = dict(value)
            flat[name] = inner.pop("name")
            flat.update(flatten_sample(inner))
        else:
            flat[name] = value
    return flat
