"""Runs in the tracking store: a sweep's parent run and its trial runs, the lookup of a sweep
and its best trial, and the retrain run with its logged model."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
)

from pipeline import tags
from pipeline.config import HYPERPARAMETERS, Experiment, Scalar, parse_experiment
from pipeline.core.decisions import (
    CANDIDATES,
    TRIAL_STATES,
    VALID_STATES,
    Selection,
    best_epoch,
    rank_trials,
)
from pipeline.core.evaluate import TestReport, confusion_figure
from pipeline.errors import PipelineError
from pipeline.tracking.locks import StoreLock
from pipeline.tracking.store import Client, experiment_id, open_client, use_tracking_uri

if TYPE_CHECKING:
    from torch import nn

RETRAIN_RUN_NAME = "retrain"
MODEL_ARTIFACT = "model"


# --- a sweep's runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedData:
    """Rows a run used, for its Dataset column: the data set, where it comes from, the split's
    fingerprint (the digest) and the rows themselves (for their shape)."""

    name: str
    source: str
    fingerprint: str
    features: np.ndarray
    labels: np.ndarray
    context: str  # MLflow's: training, testing

    def as_input(self) -> DatasetInput:
        """The run input MLflow records: name, digest, source, shapes (not the rows)."""
        profile = {"features_shape": list(self.features.shape), "targets_shape": [len(self.labels)]}
        dataset = DatasetEntity(
            name=self.name,
            digest=self.fingerprint,
            source_type="local",
            source=json.dumps({"uri": self.source}),
            profile=json.dumps(profile),
        )
        return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, self.context)])


def flat_settings(experiment: Experiment) -> dict[str, Scalar]:
    """The experiment's settings as dotted keys (params excluded: they are the trials' business)."""
    dumped = experiment.model_dump(mode="json", exclude={"params", "search"})
    flat: dict[str, Scalar] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif node is not None and node != "":
            flat[prefix.rstrip(".")] = node

    walk(dumped, "")
    flat["search.algorithm"] = experiment.search.algorithm
    flat["search.n_initial_points"] = experiment.n_initial_points
    flat["search.points_to_evaluate"] = len(experiment.search.points_to_evaluate)
    return flat


def describe_experiment(experiment: Experiment) -> str:
    """The experiment's description (Markdown, shown on its page in MLflow's UI)."""
    about = f"{experiment.description}\n\n" if experiment.description else ""
    best = "highest" if experiment.mode == "max" else "lowest"
    return (
        f"{about}Hyperparameter sweeps of `{experiment.name}` on the `{experiment.data.source}` "
        f"data: one parent run per sweep (its settings, `trials.csv` and the sweep report under "
        f"`report/`), one nested run per trial, and a `retrain` run holding the model registered "
        f"as `{experiment.model_name}`. Trials are ranked on `{experiment.metric}` ({best} wins) "
        f"at their best epoch: sort the trial runs by `best_{experiment.metric}`."
    )


def start_parent_run(
    client: Client,
    experiment_id: str,
    run_name: str,
    experiment: Experiment,
    space_text: str,
    tags: dict[str, str],
    params: dict[str, Scalar],
    data: DatasetInput,
) -> str:
    """Open the sweep's parent run: its settings, data, the search-space file and the resolved
    config."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **tags}
    )
    run_id = str(run.info.run_id)
    settings = {**flat_settings(experiment), **params}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    client.log_inputs(run_id, [data])
    client.log_text(run_id, space_text, "search_space.yaml")
    client.log_text(run_id, json.dumps(experiment.model_dump(mode="json"), indent=2), "config.json")
    return run_id


def sweep_tags(sweep_path: str, data_fingerprint: str, code_version: str | None) -> dict[str, str]:
    """The tags that mark a parent run as a sweep: where its trial state is, which data, which
    code."""
    marks = {tags.SWEEP_PATH: sweep_path, tags.DATA_FINGERPRINT: data_fingerprint}
    if code_version:
        marks[MLFLOW_GIT_COMMIT] = code_version
    return marks


def reopen_run(client: Client, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed sweep's parent)."""
    client.update_run(run_id, status="RUNNING")


def finish_parent_run(
    client: Client,
    run_id: str,
    table: pd.DataFrame,
    best: dict[str, Any] | None,
    param_names: list[str],
    status: str,
) -> None:
    """Record the best trial and the trial table on the parent run and end it with `status`."""
    params: list[Param] = []
    metrics: list[Metric] = []
    now = int(time.time() * 1000)
    if best is not None:
        chosen = hyperparameters_of(best)
        params = [
            Param(f"{tags.BEST_PARAM}{n}", str(chosen[n])) for n in param_names if n in chosen
        ]
        params.append(Param(tags.BEST_PARAM + tags.TRIAL_ID, str(best["trial_id"])))
        for name in ("val_acc", "val_loss", "epoch"):
            metrics.append(Metric(f"best_{name}", float(best[name]), now, 0))
    counts = table["state"].value_counts() if len(table) else pd.Series(dtype=int)
    counted = [
        RunTag(f"{tags.TRIAL_COUNT}{state}", str(int(counts.get(state, 0))))
        for state in TRIAL_STATES
    ]
    client.log_batch(run_id, metrics=metrics, params=params, tags=counted)
    client.log_text(run_id, table.to_csv(index=False), "trials.csv")
    client.set_terminated(run_id, status)


def child_runs(client: Client, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every run nested under the parent run."""
    return search_all(client, experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def search_all(
    client: Client, experiment_id: str, filter_string: str, order_by: list[str] | None = None
) -> list[Run]:
    """Every run of the experiment that matches, page after page."""
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=order_by,
            max_results=1000,
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def trial_states(client: Client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial id -> the state its child run was tagged with."""
    runs = child_runs(client, experiment_id, parent_run_id)
    return {
        r.data.tags[tags.TRIAL_ID]: r.data.tags.get(tags.TRIAL_STATE, "")
        for r in runs
        if tags.TRIAL_ID in r.data.tags
    }


def close_open_runs(client: Client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the parent and any child still RUNNING, so no run outlives its sweep."""
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, status)


# --- finding a sweep -------------------------------------------------------------------------


def latest_sweep(client: Client, experiment_id: str, finished: bool) -> Run | None:
    """The experiment's most recently started sweep (only finished ones if `finished`)."""
    query = f"tags.{tags.SWEEP_PATH} != ''"
    if finished:
        query += " and attributes.status = 'FINISHED'"
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def sweep_lock(client: Client, run_name: str) -> StoreLock:
    """The lock a sweep's driver holds while it runs: a sweep that did not finish and whose lock
    is free (its driver died) is interrupted, not running."""
    return StoreLock(client, f"sweep.{run_name}")


def interrupted_sweeps(client: Client, experiment_id: str) -> list[Run]:
    """The experiment's sweeps that did not finish, were not abandoned and whose driver is gone
    (stopped, killed, lost with its node), newest first."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{tags.SWEEP_PATH} != '' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    return [
        run
        for run in found
        if tags.SWEEP_ABANDONED not in run.data.tags
        and sweep_lock(client, run.info.run_name).live_holder() is None
    ]


def describe_sweep(run: Run) -> str:
    started = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc)
    return (
        f"sweep {run.info.run_name} (parent run {run.info.run_id}, {run.info.status}, started "
        f"{started:%Y-%m-%d %H:%M} UTC)"
    )


def find_unfinished_sweep(
    client: Client, experiment_id: str, parent_run_id: str | None = None
) -> tuple[str, str, str]:
    """(parent run id, run name, sweep path) of the given sweep, or else of the experiment's
    latest interrupted one."""
    if parent_run_id is None:
        waiting = interrupted_sweeps(client, experiment_id)
        if not waiting:
            raise PipelineError("no interrupted sweep to resume in this experiment")
        run = waiting[0]
    else:
        run = client.get_run(parent_run_id)
        if run.info.status == "FINISHED":
            raise PipelineError(f"sweep {parent_run_id} finished; nothing to resume")
    return run.info.run_id, run.info.run_name, run.data.tags[tags.SWEEP_PATH]


def abandon_sweep(client: Client, experiment_id: str, run: Run) -> None:
    """End an interrupted sweep for good: its open runs KILLED, the parent tagged abandoned, the
    lock its dead driver left dropped."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    client.set_tag(run.info.run_id, tags.SWEEP_ABANDONED, now)
    close_open_runs(client, experiment_id, run.info.run_id, "KILLED")
    sweep_lock(client, run.info.run_name).clear_stale()


def reconcile_trial_runs(
    client: Client,
    experiment: Experiment,
    experiment_id: str,
    parent_run_id: str,
    states: dict[str, str],
    histories: dict[str, list[dict[str, float]]] | None = None,
) -> int:
    """Make the trial runs say what Ray's sweep state says (`states`: trial id -> state): a run
    left `running` by a killed driver gets its trial's state, and a run of a trial Ray never
    saved (started just before a SIGKILL; resumed, its configuration runs under a new trial id)
    is deleted, so that there is one run per trial. With `histories` (trial id -> epochs Ray
    recorded), epochs a killed driver reported to Ray but never wrote to MLflow are written, and
    the best epoch of a trial that ended meanwhile. Returns how many runs were deleted."""
    deleted = 0
    for run in child_runs(client, experiment_id, parent_run_id):
        trial_id = run.data.tags.get(tags.TRIAL_ID)
        if trial_id is None:
            continue
        if trial_id not in states:
            client.set_tag(run.info.run_id, tags.TRIAL_STATE, "lost")
            client.set_terminated(run.info.run_id, "KILLED")
            client.delete_run(run.info.run_id)  # MLflow keeps it, recoverable, out of views
            deleted += 1
            continue
        if run.data.tags.get(tags.TRIAL_STATE) not in TRIAL_STATES and states[trial_id]:
            client.set_tag(run.info.run_id, tags.TRIAL_STATE, states[trial_id])
        if histories is not None:
            history = histories.get(trial_id, [])
            missing = missing_epochs(client, run.info.run_id, history)
            if states[trial_id] in VALID_STATES and "best_val_acc" not in run.data.metrics:
                missing += best_metrics(history, experiment.metric, experiment.mode)
            write_metrics(client, run.info.run_id, missing)
    return deleted


def missing_epochs(client: Client, run_id: str, history: list[dict[str, float]]) -> list[Metric]:
    """The epochs of `history` the run lacks, at the time Ray recorded them."""
    logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
    now = time.time()
    return [
        Metric(name, float(epoch[name]), int(epoch.get("timestamp", now) * 1000), step)
        for epoch in history
        if (step := int(epoch["epoch"])) not in logged
        for name in ("train_loss", "val_loss", "val_acc")
    ]


def best_metrics(history: list[dict[str, float]], metric: str, mode: str) -> list[Metric]:
    """A trial's summary from its epochs: `best_val_acc`, `best_val_loss` and `best_epoch` of
    its best epoch on `metric` (logged at that epoch's step); none for an empty history."""
    best = best_epoch(history, metric, mode)
    if best is None:
        return []
    now, step = int(time.time() * 1000), int(best["epoch"])
    return [
        Metric(f"best_{name}", float(best[name]), now, step)
        for name in ("val_acc", "val_loss", "epoch")
    ]


def logged_epochs(client: Client, run_id: str) -> list[dict[str, float]]:
    """A trial run's logged epochs: epoch, val_acc, val_loss."""
    epochs: dict[int, dict[str, float]] = {}
    for name in ("val_acc", "val_loss"):
        for m in client.get_metric_history(run_id, name):
            epochs.setdefault(m.step, {"epoch": float(m.step)})[name] = m.value
    return [epochs[step] for step in sorted(epochs)]


def write_metrics(client: Client, run_id: str, missing: list[Metric]) -> None:
    """Log metrics in batches of MLflow's size limit."""
    for start in range(0, len(missing), 999):
        client.log_batch(run_id, metrics=missing[start : start + 999])


def hyperparameters_of(row: dict[str, Any]) -> dict[str, Scalar]:
    """A trials.csv row's hyperparameters, as plain Python values of their own type (NaN: not
    set, so left out; an integer that pandas made a float is an integer again)."""
    values: dict[str, Scalar] = {}
    for name, value in row.items():
        if name not in HYPERPARAMETERS or pd.isna(value):
            continue
        plain = value.item() if isinstance(value, np.generic) else value
        values[name] = int(plain) if HYPERPARAMETERS[name].kind is int else plain
    return values


@dataclass(frozen=True)
class SweepRecord:
    """A finished sweep as MLflow recorded it: its settings and its best valid trial."""

    experiment_id: str
    parent_run_id: str
    run_name: str
    experiment: Experiment
    data_fingerprint: str
    best: dict[str, Any]  # the trial to retrain: the sweep's best, or the candidate chosen
    candidates: tuple[dict[str, Any], ...]  # the best few valid trials, best first

    @property
    def params(self) -> dict[str, Scalar]:
        """The best trial's hyperparameters (those its configuration sampled)."""
        return hyperparameters_of(self.best)

    @property
    def epochs(self) -> int:
        """The epoch at which the best trial scored best: the retrain trains exactly this many."""
        return int(self.best["epoch"])

    @property
    def score(self) -> float:
        """The best trial's score on the sweep's metric."""
        return float(self.best[self.experiment.metric])


def find_sweep(client: Client, experiment_name: str, parent_run_id: str | None) -> SweepRecord:
    """The named sweep, or the experiment's latest finished one, with its best valid trial."""
    experiment = experiment_id(client, experiment_name)
    if parent_run_id is None:
        run = latest_sweep(client, experiment, finished=True)
        if run is None:
            raise PipelineError(f"experiment '{experiment_name}' has no finished sweep")
    else:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException:
            raise PipelineError(f"no run '{parent_run_id}' in the tracking store") from None
        if run.info.experiment_id != experiment or tags.SWEEP_PATH not in run.data.tags:
            raise PipelineError(
                f"run '{parent_run_id}' is not a sweep of experiment '{experiment_name}'"
            )
        if run.info.status != "FINISHED":
            raise PipelineError(
                f"sweep {parent_run_id} did not finish ({run.info.status}); resume it with "
                "`python -m pipeline tune --resume` first"
            )
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        config = json.loads(
            Path(client.download_artifacts(run_id, "config.json", folder)).read_text()
        )
    table = sweep_table(client, run_id)
    settings = parse_experiment(config, f"run {run_id}: config.json")
    ranked = rank_trials(table, settings.metric, settings.mode).head(CANDIDATES)
    if ranked.empty:
        raise PipelineError(
            f"sweep {run_id} has no trial that completed or stopped without diverging or "
            "failing; nothing to retrain or register"
        )
    candidates = tuple({str(k): v for k, v in row.items()} for _, row in ranked.iterrows())
    return SweepRecord(
        experiment,
        run_id,
        run.info.run_name,
        settings,
        run.data.tags.get(tags.DATA_FINGERPRINT, ""),
        candidates[0],
        candidates,
    )


def sweep_table(client: Client, parent_run_id: str) -> pd.DataFrame:
    """The trial table a finished sweep recorded (trials.csv): one row per trial."""
    with tempfile.TemporaryDirectory() as folder:
        return pd.read_csv(client.download_artifacts(parent_run_id, "trials.csv", folder))


def set_run_tags(client: Client, run_id: str, marks: dict[str, str]) -> None:
    """Tag a run, in one batch."""
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in marks.items()])


def record_run(client: Client, experiment_id: str, run_name: str, marks: dict[str, str]) -> str:
    """A finished run that only records something (tags), such as a night that did not sweep."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **marks}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)


# --- nights --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NightRecord:
    """A night's run: the sweep's parent run, or a run recording a night that did not sweep."""

    run_id: str
    status: str  # the run's: RUNNING, FINISHED, KILLED, FAILED
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int  # ms since the epoch

    @property
    def date(self) -> str:
        return self.tags.get(tags.NIGHT_DATE, "")

    @property
    def is_sweep(self) -> bool:
        return tags.SWEEP_PATH in self.tags

    @property
    def sweep_path(self) -> str:
        return self.tags.get(tags.SWEEP_PATH, "")


def night_records(
    client: Client, experiment_ids: list[str], query: str = "", limit: int = 200
) -> list[NightRecord]:
    """Runs tagged with a night date (and matching `query`, an MLflow filter), newest first."""
    found = client.search_runs(
        experiment_ids,
        filter_string=" and ".join(q for q in (f"tags.`{tags.NIGHT_DATE}` != ''", query) if q),
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        NightRecord(
            r.info.run_id, r.info.status, dict(r.data.tags), dict(r.data.metrics), r.info.start_time
        )
        for r in found
    ]


def experiment_ids(client: Client) -> list[str]:
    """Every active experiment's id."""
    return [str(e.experiment_id) for e in client.search_experiments(max_results=1000)]


# --- the retrain run and its model ---------------------------------------------------------


@dataclass(frozen=True)
class RetrainedModel:
    """A retrain's outcome, as the retrain run records it."""

    network: nn.Module  # softmax output, eval mode, on the CPU
    report: TestReport  # its one test
    train_losses: list[float]  # per epoch
    train_seconds: float
    device: str
    params: dict[str, Scalar]  # hyperparameters, epochs, row counts
    data_fingerprint: str
    dataset_name: str
    example: np.ndarray  # a few input rows, for the signature and the input example
    example_output: np.ndarray  # the network's output for them
    metadata: dict[str, Any]  # stored with the model: what prediction and promotion need
    data: list[LoggedData]  # the rows it trained on and was tested on
    selection: Selection  # the candidates' second opinions, this model's first


@dataclass(frozen=True)
class RetrainRecord:
    """Where the retrain was logged."""

    run_id: str
    model_uri: str  # runs:/... or models:/m-... URI of the logged model
    report: TestReport


def log_retrain_run(tracking_uri: str, sweep: SweepRecord, model: RetrainedModel) -> RetrainRecord:
    """Log the retrain under the sweep's parent run: params, history, test scores and the model."""
    client = open_client(tracking_uri)
    report = model.report
    marks = {
        MLFLOW_RUN_NAME: RETRAIN_RUN_NAME,
        MLFLOW_PARENT_RUN_ID: sweep.parent_run_id,
        tags.SOURCE_TRIAL_ID: str(sweep.best["trial_id"]),
        tags.DATA_FINGERPRINT: model.data_fingerprint,
        tags.DEVICE: model.device,
    }
    run = client.create_run(sweep.experiment_id, run_name=RETRAIN_RUN_NAME, tags=marks)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", v, now, i + 1) for i, v in enumerate(model.train_losses)]
        metrics += [Metric(k, v, now, 0) for k, v in report.metrics().items()]
        metric = sweep.experiment.metric
        metrics += [
            Metric(f"trial_{metric}", sweep.score, now, 0),
            Metric(f"selection_{metric}", model.selection.score, now, 0),
            Metric("train_seconds", model.train_seconds, now, 0),
        ]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in model.params.items()],
            tags=[RunTag(tags.TEST_ROWS_SEEN, "once")],
        )
        client.log_inputs(run_id, [d.as_input() for d in model.data])
        client.log_dict(run_id, report.per_class(), "classification_report.json")
        client.log_dict(run_id, selection_record(model.selection), "selection.json")
        title = f"{model.dataset_name}: test accuracy {report.test_acc:.4f}"
        client.log_figure(run_id, confusion_figure(report, title), "confusion_matrix.png")
        model_uri = log_network(tracking_uri, run_id, model)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return RetrainRecord(run_id, model_uri, report)


def selection_record(selection: Selection) -> dict[str, Any]:
    """How the retrained trial was chosen, as the retrain run's selection.json shows it."""
    metric = selection.metric
    return {
        "chosen": selection.chosen.trial_id,
        f"selection_{metric}": selection.score,
        "rule": f"the best second opinion on {metric}: cross-validated again on fresh folds "
        "from a fresh seed, averaged over the epochs centred on the trial's best one",
        "candidates": [
            {
                "trial_id": o.trial_id,
                "epoch": o.epoch,
                f"sweep_{metric}": o.sweep_score,
                f"second_opinion_{metric}": o.second_opinion,
            }
            for o in selection.opinions
        ],
    }


def log_network(tracking_uri: str, run_id: str, model: RetrainedModel) -> str:
    """Log the network in the pickle-free pt2 format with signature, example and metadata."""
    import mlflow.pytorch  # loads torch: only the retrain needs it
    from mlflow.models import infer_signature

    signature = infer_signature(model.example, model.example_output)
    # log_model speaks only through the fluent API; the active run gives it the experiment.
    with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model.network,
            name=MODEL_ARTIFACT,
            serialization_format="pt2",
            signature=signature,
            input_example=model.example,
            pip_requirements=pip_requirements(),
            metadata=model.metadata,
        )
    return str(info.model_uri)


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; explicit, which skips MLflow's slow inference."""
    import mlflow
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]
