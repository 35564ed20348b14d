"""What each training hyperparameter means: its domain (every value a space may yield is checked
against it), its default, and the resolved configuration a trial trains with. A builder's own
arguments declare their domains the same way, as `Annotated[int, Hyperparameter(...)]`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.config.metrics import Task
from pipeline.config.records import Scalar, did_you_mean

# gd is full-batch gradient descent: plain SGD on the whole training split in one step.
OPTIMIZERS = ("gd", "sgd", "momentum", "adam", "adamw", "rmsprop")
# A regression's training objective on the standardized targets: squared error, or Huber's
# (squared near zero, linear beyond one standard deviation: outliers pull less).
REGRESSION_LOSSES = ("mse", "huber")


@dataclass(frozen=True, kw_only=True)
class Hyperparameter:
    """The domain of one tunable hyperparameter, used to check every value a space can yield."""

    kind: type
    doc: str = ""
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    allowed: tuple[Scalar, ...] = ()
    optimizers: tuple[str, ...] = ()  # non-empty: only meaningful for these optimizers
    task: Task | None = None  # set: only meaningful for this task

    def check(self, value: Scalar) -> str | None:
        """Why `value` is not valid here, or None."""
        if self.allowed:
            if value not in self.allowed:
                names = [str(a) for a in self.allowed]
                hint = did_you_mean(str(value), names)
                return f"'{value}' is not one of {', '.join(names)}{hint}"
            return None
        if self.kind in (str, bool):
            if not isinstance(value, self.kind):
                return f"{value!r} is not {'text' if self.kind is str else 'true or false'}"
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


# The training hyperparameters: how a network is fitted, whatever network it is. Every other
# parameter of a space is a keyword argument of the model's builder (see `door`).
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(kind=float, doc="learning rate", low=1e-12, high=10.0),
    "optimizer": Hyperparameter(kind=str, doc="update rule", allowed=OPTIMIZERS),
    "momentum": Hyperparameter(
        kind=float, doc="SGD momentum", low=0.0, high=1.0, high_open=True, optimizers=("momentum",)
    ),
    "batch_size": Hyperparameter(
        kind=int, doc="mini-batch size", low=1, optimizers=tuple(o for o in OPTIMIZERS if o != "gd")
    ),
    "weight_decay": Hyperparameter(kind=float, doc="L2 penalty", low=0.0, high=1.0),
    "label_smoothing": Hyperparameter(
        kind=float,
        doc="share of each target spread over all classes",
        low=0.0,
        high=1.0,
        high_open=True,
        task="classification",
    ),
    "loss": Hyperparameter(
        kind=str, doc="training objective", allowed=REGRESSION_LOSSES, task="regression"
    ),
    "epochs": Hyperparameter(kind=int, doc="epochs to train (capped by budget.max_epochs)", low=1),
}


# The columns of a sweep's trial table besides its hyperparameters and its scores (core.trials):
# names no builder argument may take (nor a score's, train_loss and val_*).
TRIAL_COLUMNS = (
    "number",
    "name",
    "trial_id",
    "state",
    "epoch",
    "epochs_trained",
    "train_seconds",
    "host",
    "device",
)


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """One resolved trial configuration; a hyperparameter absent from the space has its default."""

    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    batch_size: int | None = 64  # None: the whole training split (full-batch gradient descent)
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # of the training loss only; validation scores plain targets
    loss: str = "mse"  # a regression's objective (REGRESSION_LOSSES)
    epochs: int | None = None  # None: budget.max_epochs
    # Every other parameter: a keyword argument of the model's builder.
    builder_args: Mapping[str, Scalar] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Scalar]) -> Hyperparameters:
        """Build from the flat parameters of a trial (see `flatten_sample`): the training
        hyperparameters, and the rest as the builder's arguments."""
        values: dict[str, Any] = {k: v for k, v in params.items() if k in HYPERPARAMETERS}
        if values.get("optimizer", cls.optimizer) == "gd":
            values["batch_size"] = None
        for f in fields(cls):
            if f.name in values and f.type in ("int", "int | None") and values[f.name] is not None:
                values[f.name] = int(values[f.name])
        rest = {k: v for k, v in params.items() if k not in HYPERPARAMETERS}
        return cls(**values, builder_args=rest)

    def planned_epochs(self, max_epochs: int) -> int:
        """Epochs this configuration trains for when no scheduler stops it."""
        return min(self.epochs or max_epochs, max_epochs)
