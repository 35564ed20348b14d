"""The sweep's winner, refit and tested (`core.refit`), handed to tracking, which logs it under
the sweep's parent run: the data it must have been tuned on, and what prediction and promotion
need to know of it."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import Experiment
from pipeline.config.door import code_fingerprint
from pipeline.core.data import Dataset, Split, stats_sample
from pipeline.core.decisions import Selection
from pipeline.core.evaluate import score
from pipeline.core.model import load_exported
from pipeline.core.refit import INPUT_EXAMPLE_ROWS, FinalModel, user_metrics
from pipeline.errors import PipelineError
from pipeline.tracking.models import RetrainedModel, RetrainRecord, log_retrain_run
from pipeline.tracking.runs import LoggedData
from pipeline.tracking.sweeps import SweepRecord


def check_same_data(sweep: SweepRecord, split: Split) -> None:
    """Refuse to retrain on data other than the sweep's (a changed file, seed or fraction)."""
    if split.fingerprint != sweep.data_fingerprint:
        raise PipelineError(
            f"the data differ from those of sweep {sweep.parent_run_id} (fingerprint "
            f"{split.fingerprint}, the sweep's {sweep.data_fingerprint}); run a new sweep"
        )


def model_metadata(experiment: Experiment, dataset: Dataset, split: Split) -> dict[str, Any]:
    """What prediction and promotion need, stored in the MLmodel file next to the network:
    the classes and features, the data's identity and how to rebuild them (the loader, its
    arguments and the code folders it is imported from), and what built the network."""
    rows = split.tuning_rows
    if dataset.features is None:  # a seeded sample, across the classes (files come by class)
        rows = rows[stats_sample(len(rows))]
    sample = dataset.rows(rows)
    return {
        "task": dataset.task,
        "metric": experiment.metric,
        "mode": experiment.mode,
        "metrics": experiment.metrics,
        "class_names": list(dataset.class_names),
        "table": None
        if dataset.table is None
        else {
            "columns": [column.spec() for column in dataset.table.columns],
            "imputes": dataset.table.imputes,
        },
        "feature_names": list(dataset.columns),
        "input_shape": list(dataset.input_shape),
        # Image inputs are scaled from 0..255 to the range the network was trained on.
        "feature_range": [float(sample.min()), float(sample.max())],
        "dataset": dataset.name,
        "loader": experiment.data.loader or f"source:{experiment.data.source}",
        "loader_args": experiment.data.args,
        "data": experiment.data.model_dump(mode="json"),
        "code_paths": list(experiment.code.paths),
        "code_fingerprint": code_fingerprint(experiment.code.paths),
        "seed": experiment.seed,
        "data_fingerprint": split.fingerprint,
        "family": experiment.model.short_name,
        "builder": experiment.model.builder_reference,
    }


def log_retrain(
    tracking_uri: str,
    sweep: SweepRecord,
    final: FinalModel,
    *,
    dataset: Dataset,
    split: Split,
    source: str,
    selection: Selection,
) -> RetrainRecord:
    """Score the test predictions and log the retrain (with its model, the rows it trained and
    was tested on, from `source`, and how it was selected) under the sweep."""
    rows = split.train[:INPUT_EXAMPLE_ROWS]
    network = load_exported(final.program)
    outputs = network(torch.from_numpy(dataset.rows(rows))).detach().numpy()
    params = {
        **sweep.best.params,
        "epochs": sweep.epochs,
        "rows.train": len(split.tuning_rows),
        "rows.test": len(split.test),
    }
    retrained = RetrainedModel(
        network=network,
        program=final.program,
        report=score(
            final.test_outputs,
            dataset.labels[split.test],
            task=dataset.task,
            metric=sweep.experiment.metric,
            class_names=dataset.class_names,
            user=user_metrics(sweep.experiment),
            mode=sweep.experiment.mode,
        ),
        train_losses=final.train_losses,
        train_seconds=final.train_seconds,
        device=final.device,
        params=params,
        data_fingerprint=split.fingerprint,
        dataset_name=dataset.name,
        example=dataset.model_inputs(rows),
        example_output=outputs,
        metadata=model_metadata(sweep.experiment, dataset, split),
        selection=selection,
        # MLflow keeps one input per name and digest: the test rows get a name of their own.
        data=[
            LoggedData(
                name=name,
                source=source,
                fingerprint=split.fingerprint,
                rows=len(rows),
                input_shape=dataset.input_shape,
                context=context,
            )
            for name, rows, context in (
                (dataset.name, split.tuning_rows, "training"),
                (f"{dataset.name}-test", split.test, "testing"),
            )
        ],
    )
    return log_retrain_run(tracking_uri, sweep, retrained)
