"""The model's pre-flight, before Ray starts: the builder (ours or the user's) builds a network
for one configuration of the space, its forward on two rows of the loaded data gives one logit
per class, and `torch.export` exports it with a dynamic batch, as the retrain will (the user's
builders: ours are known to export). Each failure is one line naming the builder and what to
change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import (
    ChoiceParam,
    ConditionalOption,
    Experiment,
    FloatParam,
    Hyperparameters,
    IntParam,
    ParamSpec,
    Scalar,
)
from pipeline.config.door import BUILT_IN_BUILDERS, import_callable
from pipeline.config.metrics import SCORES
from pipeline.core.data import Dataset, Split, column_stats, fit_table
from pipeline.core.metrics import user_scores
from pipeline.core.model import build_network, export_network, servable
from pipeline.core.sources import experiment_split
from pipeline.errors import PipelineError, first_line


def first_configuration(params: dict[str, ParamSpec]) -> dict[str, Scalar]:
    """One configuration of the space: each range's low end, each choice's first option (and
    that option's own parameters), each constant."""
    point: dict[str, Scalar] = {}
    for name, spec in params.items():
        if isinstance(spec, (FloatParam, IntParam)):
            point[name] = spec.low
        elif isinstance(spec, ChoiceParam):
            option = spec.values[0]
            if isinstance(option, ConditionalOption):
                point[name] = option.name
                point.update(first_configuration(option.params))
            else:
                point[name] = option
        else:
            point[name] = spec
    return point


def checked_split(experiment: Experiment, data_dir: Path) -> tuple[Dataset, Split]:
    """The experiment's data and split (`data_dir` caches what it downloads), with its model's
    and metrics' pre-flight on them: what a sweep needs before Ray starts or anything is
    written."""
    dataset, split = experiment_split(experiment, data_dir)
    check_model(experiment, dataset, split)
    check_metrics(experiment, dataset, split)
    return dataset, split


def check_model(experiment: Experiment, dataset: Dataset, split: Split) -> None:
    """Build, run and export the network on two training rows, or refuse in one line."""
    reference = experiment.model.builder_reference
    where = f"model.builder {reference}"
    builder = import_callable(reference, (), "model.builder")
    args = dict(Hyperparameters.from_params(first_configuration(experiment.params)).builder_args)
    rows = dataset.rows(split.train[:2])
    mean, std = (torch.from_numpy(s) for s in column_stats(rows, experiment.data.shared_scale))
    table = None if dataset.table is None else fit_table(rows, dataset.table)
    try:
        network = build_network(builder, dataset.spec, args, mean=mean, std=std, table=table)
        network.eval()
    except Exception as exc:  # the user's code may raise anything
        raise PipelineError(
            f"{where}: building {args or 'with its defaults'} failed: {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from None
    shape = (2, *dataset.input_shape)
    try:
        with torch.no_grad():
            output = network(torch.from_numpy(rows))
    except Exception as exc:  # the user's code may raise anything
        raise PipelineError(
            f"{where}: its forward failed on two examples shaped {list(shape)}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    expected = [2, dataset.spec.num_outputs]
    got = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if got != expected:
        raise PipelineError(
            f"{where}: on two examples shaped {list(shape)} it returns {got}; expected "
            f"{expected}, " + ("one logit per class" if dataset.stratified else "one prediction")
        )
    if reference in BUILT_IN_BUILDERS.values():
        # Ours export for every value of their domains (tests/test_model.py); an export costs
        # a second of torch.export's start-up, so only the user's code is exported here.
        return
    try:
        export_network(servable(network, dataset.spec), torch.from_numpy(rows))
    except Exception as exc:  # torch.export's errors are of many types
        raise PipelineError(
            f"{where}: torch.export cannot export its forward for any batch size, which the "
            f"registered model needs ({first_line(exc)}); avoid Python control flow on tensor "
            "values and shapes fixed to the batch (e.g. x.view(2, -1); use x.flatten(1))"
        ) from None


def check_metrics(experiment: Experiment, dataset: Dataset, split: Split) -> None:
    """The user's metrics function, called once on perfect outputs for some training rows (their
    own targets), returns numbers, the metric's key among them; or one line says why not."""
    if experiment.metrics is None:
        return
    where = f"metrics {experiment.metrics}"
    user = import_callable(experiment.metrics, (), "metrics")
    targets = dataset.labels[split.train[:32]]
    outputs = targets if dataset.task == "regression" else np.eye(dataset.num_classes)[targets]
    try:
        scores = user_scores(user, outputs, targets)
    except TypeError as exc:
        raise PipelineError(str(exc)) from None
    except Exception as exc:  # the user's code may raise anything
        raise PipelineError(
            f"{where}: failed on {len(targets)} rows: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    key = experiment.score.name
    if key not in SCORES and key not in scores:
        raise PipelineError(
            f"{where}: returned {', '.join(sorted(scores)) or 'nothing'}, not {key} "
            f"(metric: {experiment.metric})"
        )
