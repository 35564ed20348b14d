"""One tracked sweep: data -> Ray Tune with our MLflow callback -> trial table and best trial."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
from ray.tune import ResultGrid

from pipeline.config import Experiment, Scalar, flatten_sample
from pipeline.data import Dataset, Split, tuning_data
from pipeline.errors import PipelineError
from pipeline.tracking import (
    TrialLogger,
    close_open_runs,
    ensure_experiment,
    finish_parent_run,
    planned_epochs,
    start_parent_run,
    trial_state,
    trial_states,
)
from pipeline.tune import check_resources, check_storage, connect_ray, make_tuner, restore_tuner

log = logging.getLogger(__name__)

SWEEP_PATH_TAG = "sweep_path"


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs and trial state go; resolved by the CLI from flags and the environment."""

    tracking_uri: str
    artifact_root: Path | None  # local stores: artifacts under mlruns/; servers choose their own
    storage: str  # Ray trial storage: an absolute folder or a URI such as s3://bucket/path
    ray_address: str | None = None
    code_version: str | None = None  # git commit of the code that ran
    worker_setup: Callable[[], None] | None = None  # runs in each Ray worker (log levels)


@dataclass(frozen=True)
class SweepResult:
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    table: pd.DataFrame
    best: dict[str, Any] | None
    wall_seconds: float
    tracking_seconds: float  # time the MLflow writer spent in MLflow calls
    interrupted: bool  # stopped (Ctrl-C) before every trial ended; `tune --resume` continues it


def trial_table(grid: ResultGrid, experiment: Experiment, states: dict[str, str]) -> pd.DataFrame:
    """One row per trial: id, state, hyperparameters, best epoch and its metrics, where it ran.

    `states` are the states the tracking callback tagged; a trial missing there gets one derived
    from its results.
    """
    rows = []
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or Path(result.path).name)
        params = flatten_sample(result.config or {})
        state = states.get(trial_id) or trial_state(
            last,
            planned_epochs(result.config or {}, experiment.budget.max_epochs),
            result.error is not None,
        )
        row: dict[str, Any] = {"trial_id": trial_id, "state": state, **params}
        if history is not None and len(history) and state != "diverged":
            ranked = history.sort_values(
                experiment.metric, ascending=experiment.mode == "min", kind="stable"
            )
            best_row = ranked.iloc[0]
            row.update(
                epoch=int(best_row["epoch"]),
                val_acc=float(best_row["val_acc"]),
                val_loss=float(best_row["val_loss"]),
                train_loss=float(best_row["train_loss"]),
            )
        row["epochs_trained"] = int(last.get("epoch", 0))
        row["train_seconds"] = (
            float(history["train_seconds"].sum())
            if history is not None and "train_seconds" in history
            else 0.0
        )
        row["host"] = last.get("hostname")
        row["device"] = last.get("device")
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(table: pd.DataFrame, metric: str, mode: str) -> dict[str, Any] | None:
    """The best completed or early-stopped trial; diverged and errored trials never qualify."""
    if table.empty or metric not in table:
        return None
    valid = table[table["state"].isin(["completed", "stopped"]) & table[metric].notna()]
    if valid.empty:
        return None
    # Ties (common: accuracies are counts over a few hundred rows) go to the lower val_loss.
    keys, ascending = [metric], [mode == "min"]
    if metric != "val_loss" and "val_loss" in valid:
        keys.append("val_loss")
        ascending.append(True)
    ranked = valid.sort_values(keys, ascending=ascending, kind="stable")
    return {str(k): v for k, v in ranked.iloc[0].items()}


def find_unfinished_sweep(client: MlflowClient, experiment_id: str) -> tuple[str, str]:
    """(parent run id, sweep path) of the latest sweep of the experiment that did not finish."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{SWEEP_PATH_TAG} != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or runs[0].info.status == "FINISHED":
        raise PipelineError(
            "no interrupted sweep to resume in this experiment (the latest finished)"
        )
    return runs[0].info.run_id, runs[0].data.tags[SWEEP_PATH_TAG]


def run_sweep(
    experiment: Experiment,
    experiment_name: str,
    dataset: Dataset,
    split: Split,
    space_text: str,
    settings: TrackingSettings,
    resume: bool = False,
) -> SweepResult:
    """Tune `experiment` on Ray, tracking every trial under one MLflow parent run."""
    started = time.perf_counter()
    # Everything that can fail for want of a cluster or storage fails before MLflow is written.
    connect_ray(settings.ray_address, settings.worker_setup, ship_code=bool(settings.ray_address))
    check_resources(experiment, autoscaling=bool(settings.ray_address))
    check_storage(settings.storage)
    client = MlflowClient(settings.tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, settings.artifact_root)
    data = tuning_data(dataset, split)
    logger: TrialLogger | None = None
    if resume:
        parent_run_id, sweep_path = find_unfinished_sweep(client, experiment_id)
        client.update_run(parent_run_id, status="RUNNING")
        tuner = restore_tuner(experiment, data, sweep_path)
    else:
        run_name = f"{experiment.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        sweep_path = f"{settings.storage.rstrip('/')}/{run_name}"
        tags = {SWEEP_PATH_TAG: sweep_path, "data_fingerprint": split.fingerprint}
        if settings.code_version:
            tags[MLFLOW_GIT_COMMIT] = settings.code_version
        sizes: dict[str, Scalar] = {
            "data.rows.train": len(split.train),
            "data.rows.val": len(split.val),
            "data.rows.test": len(split.test),
            "data.fingerprint": split.fingerprint,
        }
        parent_run_id = start_parent_run(
            client, experiment_id, run_name, experiment, space_text, tags, sizes
        )
        logger = TrialLogger(
            settings.tracking_uri, experiment_id, parent_run_id, experiment.budget.max_epochs
        )
        tuner = make_tuner(experiment, data, settings.storage, run_name, [logger])
    log.info("sweep %s: experiment '%s', parent run %s", sweep_path, experiment_name, parent_run_id)
    status = "KILLED"
    try:
        grid = tuner.fit()
        if logger is not None:
            logger.close()
        interrupted = grid.num_terminated + grid.num_errors < experiment.budget.num_samples
        states = trial_states(client, experiment_id, parent_run_id)
        table = trial_table(grid, experiment, states)
        best = best_trial(table, experiment.metric, experiment.mode)
        param_names = [c for c in table.columns if c in flatten_columns(grid)]
        status = "KILLED" if interrupted else "FINISHED"
        # MLflow params are write-once: the best trial is recorded when the sweep completes.
        final_best = None if interrupted else best
        finish_parent_run(client, parent_run_id, table, final_best, param_names, status)
    except Exception:
        status = "FAILED"
        raise
    finally:
        if logger is not None:
            logger.close()
        close_open_runs(client, experiment_id, parent_run_id, status)
    if logger is not None and logger.errors:
        raise PipelineError(f"{len(logger.errors)} MLflow writes failed, first: {logger.errors[0]}")
    return SweepResult(
        experiment_name,
        experiment_id,
        parent_run_id,
        table,
        best,
        time.perf_counter() - started,
        logger.busy_seconds if logger else 0.0,
        interrupted,
    )


def flatten_columns(grid: ResultGrid) -> set[str]:
    """Every hyperparameter name any trial of the grid sampled."""
    configs = (grid[i].config or {} for i in range(len(grid)))
    return {name for config in configs for name in flatten_sample(config)}
