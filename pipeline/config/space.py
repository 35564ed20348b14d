"""The tree of a search space and its one walker: every parameter, top-level or under a chosen
option, with where it sits. Checking a space, checking a point of it, the parameters a point
sets, the searcher's translation and the report's log axes all walk the space through `walk`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.config.door import Signature
from pipeline.config.hyperparameters import (
    HYPERPARAMETERS,
    TRIAL_COLUMNS,
    Hyperparameter,
    Hyperparameters,
)
from pipeline.config.metrics import Task, is_score_column
from pipeline.config.records import (
    ChoiceParam,
    ConditionalOption,
    FloatParam,
    IntParam,
    ParamSpec,
    Scalar,
    did_you_mean,
    option_name,
)


@dataclass(frozen=True)
class SpaceNode:
    """One parameter of a space, and the options it sits under: (choice, option) pairs from the
    top down, e.g. (("optimizer", "momentum"),) for the momentum of the momentum option."""

    name: str
    spec: ParamSpec
    under: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        """The options above it as `optimizer/momentum/`: path + name is unique in the space."""
        return "".join(f"{choice}/{option}/" for choice, option in self.under)

    @property
    def key(self) -> str:
        """Its key in the file, for errors: `params.optimizer.momentum.momentum`."""
        return "params" + "".join(f".{c}.{o}" for c, o in self.under) + f".{self.name}"

    @property
    def sampled(self) -> bool:
        """Drawn by the searcher (not a constant)."""
        return isinstance(self.spec, (FloatParam, IntParam, ChoiceParam))

    def active(self, point: dict[str, Scalar]) -> bool:
        """Whether a point that picks options so sets this parameter."""
        return all(point.get(choice) == option for choice, option in self.under)


def walk(
    params: dict[str, ParamSpec], under: tuple[tuple[str, str], ...] = ()
) -> Iterator[SpaceNode]:
    """Every parameter of the space, each followed by the parameters of its options."""
    for name, spec in params.items():
        yield SpaceNode(name, spec, under)
        if isinstance(spec, ChoiceParam):
            for option in spec.values:
                if isinstance(option, ConditionalOption):
                    yield from walk(option.params, (*under, (name, option.name)))


def check_params(params: dict[str, ParamSpec], epochs_cap: int, task: Task) -> None:
    """Check every value each training hyperparameter can take; one under an optimizer option
    must apply to that optimizer, and each to the task. The other parameters are the builder's
    (`check_builder_args`)."""
    for node in walk(params):
        name, spec, key = node.name, node.spec, node.key
        meta = HYPERPARAMETERS.get(name)
        if meta is None:
            continue
        if meta.task is not None and meta.task != task:
            raise ValueError(f"{key}: applies to {meta.task} only; this space's task is {task}")
        optimizer = node.under[-1][1] if node.under else None
        if optimizer and meta.optimizers and optimizer not in meta.optimizers:
            raise ValueError(
                f"{key}: does not apply to optimizer {optimizer} "
                f"(only to {', '.join(meta.optimizers)})"
            )
        for value, sub in spec_values(spec):
            problem = meta.check(value)
            if problem is None and name == "epochs" and int(value) > epochs_cap:
                problem = f"{value} exceeds budget.max_epochs ({epochs_cap})"
            if problem:
                raise ValueError(f"{key}{sub}: {problem}")
        check_integer(node, meta)
    for node in walk(params):
        carries = isinstance(node.spec, ChoiceParam) and any(
            isinstance(option, ConditionalOption) for option in node.spec.values
        )
        if carries and node.name != "optimizer":
            raise ValueError(
                f"{node.key}: only optimizer options may carry parameters of their own"
            )


def check_integer(node: SpaceNode, domain: Hyperparameter) -> None:
    if isinstance(node.spec, FloatParam) and domain.kind is int:
        raise ValueError(f"{node.key}: {node.name} is an integer; use type: int")


def check_builder_args(params: dict[str, ParamSpec], builder: Signature) -> None:
    """Every parameter that is not a training hyperparameter is an argument of the builder,
    with values in the domain its annotation declares; every argument it requires is given."""
    for name in builder.arguments:
        if name in HYPERPARAMETERS or name in TRIAL_COLUMNS or is_score_column(name):
            kind = "training hyperparameter" if name in HYPERPARAMETERS else "trial table column"
            raise ValueError(
                f"builder {builder.reference} takes '{name}', the name of a {kind} of the "
                "pipeline; give its argument another name"
            )
    given = set()
    for node in walk(params):
        if node.name in HYPERPARAMETERS:
            continue
        given.add(node.name)
        argument = builder.arguments.get(node.name)
        if argument is None:
            if builder.open_ended:
                continue
            known = [*HYPERPARAMETERS, *builder.arguments]
            raise ValueError(
                f"{node.key}: '{node.name}' is neither a training hyperparameter nor an argument "
                f"of builder {builder.reference}{did_you_mean(node.name, known)}"
            )
        if argument.domain is None:
            continue
        for value, sub in spec_values(node.spec):
            problem = argument.domain.check(value)
            if problem:
                raise ValueError(f"{node.key}{sub}: {problem}")
        check_integer(node, argument.domain)
    for argument in builder.arguments.values():
        if argument.required and argument.name not in given:
            raise ValueError(
                f"params: builder {builder.reference} needs '{argument.name}' (it has no "
                f"default); add params.{argument.name}"
            )


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
    nodes = list(walk(params))
    for node in (n for n in nodes if not n.under):
        scope = HYPERPARAMETERS[node.name].optimizers if node.name in HYPERPARAMETERS else ()
        misfits = [o for o in chosen if scope and o not in scope]
        if misfits:
            raise ValueError(
                f"{node.key}: does not apply to optimizer {', '.join(misfits)}; "
                f"put it under the optimizer options it applies to ({', '.join(scope)})"
            )
    for node in (n for n in nodes if n.under and n.name in params):
        raise ValueError(f"{node.key}: also given at the top level")


def active_params(params: dict[str, ParamSpec], point: dict[str, Scalar]) -> list[SpaceNode]:
    """The sampled (non-constant) parameters a point sets, following the options it picks."""
    return [node for node in walk(params) if node.sampled and node.active(point)]


def sampled_names(params: dict[str, ParamSpec], point: dict[str, Scalar]) -> list[str]:
    """Names of the parameters a point must give (constants are not sampled)."""
    return [node.name for node in active_params(params, point)]


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
    for node in active_params(params, point):
        name, spec, value = node.name, node.spec, point[node.name]
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
    for node in active_params(params, point):
        spec, value = node.spec, point[node.name]
        if isinstance(spec, ChoiceParam):
            typed[node.name] = next(o for o in map(option_name, spec.values) if o == value)
        else:
            typed[node.name] = int(value) if isinstance(spec, IntParam) else float(value)
    return typed


def log_scaled(params: dict[str, ParamSpec]) -> frozenset[str]:
    """The parameters the space samples log-uniformly, conditional ones included."""
    return frozenset(node.name for node in walk(params) if getattr(node.spec, "log", False))


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
