"""Tune, retrain and register: a sweep tracked in MLflow, its best trial refit on train +
validation, tested once and registered as the challenger."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from secrets import token_hex
from typing import Any

import pandas as pd

from pipeline import storage, tags
from pipeline.config import Experiment, Hyperparameters, Scalar, load_experiment
from pipeline.core.data import Dataset, Split, refolded, split_dataset, tuning_data
from pipeline.core.decisions import Opinion, Selection, best_trial, select, with_states
from pipeline.core.evaluate import TestReport
from pipeline.core.sources import load_dataset, source_uri
from pipeline.distributed import cluster
from pipeline.distributed.search import WarmStart
from pipeline.distributed.tuner import SweepWatcher, fit, make_tuner, restore_tuner
from pipeline.errors import PipelineError
from pipeline.retrain import check_same_data, log_retrain, second_opinion, train_and_test
from pipeline.settings import Settings
from pipeline.stopwatch import Stopwatch
from pipeline.tracking import runs, sweeps
from pipeline.tracking.locks import LockHeld, StoreLock
from pipeline.tracking.preflight import check_tracking_store, store_exists
from pipeline.tracking.registry import register_challenger
from pipeline.tracking.resume import (
    abandon_sweep,
    describe_sweep,
    find_unfinished_sweep,
    interrupted_sweeps,
    reconcile_trial_runs,
    sweep_lock,
)
from pipeline.tracking.store import (
    Client,
    ensure_experiment,
    find_experiment,
    open_client,
)
from pipeline.tracking.trials import TrialRecorder
from pipeline.workflows.reporting import ReportFiles, write_sweep_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """A sweep as it ended: its runs, its trial table and its best trial."""

    experiment_name: str
    experiment_id: str
    parent_run_id: str
    table: pd.DataFrame
    best: dict[str, Any] | None
    metric: str
    wall_seconds: float
    tracking_seconds: float  # time the MLflow writer spent in MLflow calls
    interrupted: bool  # stopped before every trial ended; `tune --resume` continues it
    terminated: bool = False  # stopped by SIGTERM (else, if interrupted, by Ctrl-C)


@dataclass(frozen=True)
class Registration:
    """A retrained best trial, tested once and registered as the challenger."""

    trial_id: str
    metric: str
    trial_score: float  # on `metric`, in the sweep
    selection_score: float  # on `metric`, its second opinion (fresh folds, fresh seed)
    report: TestReport
    test_rows: int
    model_name: str
    version: str


@dataclass(frozen=True)
class TuneOutcome:
    sweep: SweepResult
    registration: Registration | None  # None: interrupted, or --no-retrain
    report: ReportFiles | None = None  # the sweep's report on its parent run, once drawn


def load_data(experiment: Experiment, data_dir: Path) -> tuple[Dataset, Split]:
    """The experiment's data set and its seeded split."""
    dataset = load_dataset(experiment.data, experiment.seed, data_dir)
    return dataset, split_dataset(dataset, experiment.data, experiment.seed)


def tune_and_register(
    space: Path,
    settings: Settings,
    experiment_name: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    retrain: bool = True,
    on_sweep: Callable[[SweepResult], None] | None = None,
    abandon: bool = False,
    watcher: SweepWatcher | None = None,
    stopwatch: Stopwatch | None = None,
) -> TuneOutcome:
    """Sweep the space, then (unless interrupted or `retrain` is off) retrain the best trial and
    register it. `watcher` sees the trial events (a progress display), `on_sweep` the sweep's
    result as soon as it ends, `stopwatch` the time each phase took.

    `resume` continues the experiment's latest interrupted sweep; otherwise a new sweep starts
    only when none is interrupted, or when `abandon` gives those up."""
    if resume and abandon:
        raise PipelineError("--resume and --abandon exclude each other")
    watch = stopwatch or Stopwatch()
    experiment = load_experiment(space, overrides)
    check_tracking_store(settings.tracking_uri)
    name = experiment_name or experiment.name
    parent_run_id = None
    if resume:
        parent_run_id = sweep_to_resume(settings, name)
    else:
        for sweep in settle_interrupted(settings, name, abandon):
            log.warning("abandoned the interrupted %s", sweep)
    dataset, split = load_data(experiment, settings.data_dir)
    watch.lap("config and data")
    log.info(
        "%s: %d rows (%d train, %d val, %d test), %d classes",
        dataset.name,
        len(dataset.labels),
        len(split.train),
        len(split.val),
        len(split.test),
        dataset.num_classes,
    )
    result = run_sweep(
        experiment, name, dataset, split, space.read_text(), settings, resume,
        parent_run_id=parent_run_id, watcher=watcher, stopwatch=watch,
    )  # fmt: skip
    if on_sweep is not None:
        on_sweep(result)
    if result.interrupted:
        return TuneOutcome(result, None)
    if result.best is None:
        raise PipelineError("no trial finished without diverging or failing; nothing registered")
    # A local Ray is done with: it stops while the retrain runs here (on a cluster, the retrain
    # runs there, on Ray).
    stopping = None if settings.ray_address else cluster.disconnect_in_background()
    registration = None
    if retrain:
        registration = retrain_and_register(settings, name, result.parent_run_id, watch)
    if stopping is None:  # the cluster's retrain is done: leave it while the report is drawn
        stopping = cluster.disconnect_in_background()
    report = report_on(settings, name, result.parent_run_id)
    watch.lap("report")
    stopping.join()
    watch.lap("ray stop")
    return TuneOutcome(result, registration, report)


def report_on(settings: Settings, experiment_name: str, parent_run_id: str) -> ReportFiles | None:
    """Draw the finished sweep's report onto its parent run. A report that fails is a warning:
    the sweep and the model it registered stand, and `report` can draw it again."""
    try:
        return write_sweep_report(settings, experiment_name, parent_run_id)
    except Exception as exc:
        log.warning(
            "the sweep report failed (%s: %s); draw it again with: python -m pipeline report "
            "--experiment %s --parent-run %s",
            type(exc).__name__,
            exc,
            experiment_name,
            parent_run_id,
        )
        return None


def run_sweep(
    experiment: Experiment,
    experiment_name: str,
    dataset: Dataset,
    split: Split,
    space_text: str,
    settings: Settings,
    resume: bool = False,
    *,
    parent_run_id: str | None = None,
    warm: WarmStart | None = None,
    tags: dict[str, str] | None = None,
    watcher: SweepWatcher | None = None,
    stopwatch: Stopwatch | None = None,
) -> SweepResult:
    """Tune `experiment` on Ray, tracking every trial under one MLflow parent run; `watcher`
    sees the trial events too, `stopwatch` the time of each phase.

    `resume` continues the sweep of `parent_run_id` (default: the experiment's latest, if it did
    not finish). A new sweep starts from `warm` if given, its parent run tagged with `tags`.
    """
    started = time.perf_counter()
    watch = stopwatch or Stopwatch()
    # Everything that can fail for want of a cluster or storage fails before MLflow is written.
    cluster.connect(settings.ray_address)
    cluster.check_resources(experiment, autoscaling=bool(settings.ray_address))
    cluster.check_storage(settings.storage, settings.storage_endpoint)
    watch.lap("ray start")
    client = open_client(settings.tracking_uri)
    experiment_id = ensure_experiment(
        client, experiment_name, settings.artifact_root, runs.describe_experiment(experiment)
    )
    data = tuning_data(dataset, split, experiment.data)
    recorder: TrialRecorder | None = None
    if resume:
        parent_run_id, run_name, sweep_path = find_unfinished_sweep(
            client, experiment_id, parent_run_id
        )
        lock = hold_sweep_lock(client, run_name)
    else:
        # Unique per sweep, not per second: two sweeps started at once never share a folder.
        run_name = f"{experiment.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{token_hex(3)}"
        sweep_path = f"{settings.storage.rstrip('/')}/{run_name}"
        lock = hold_sweep_lock(client, run_name)
    status = "KILLED"
    try:
        if resume:
            assert parent_run_id is not None
            runs.reopen_run(client, parent_run_id)
            tuner = restore_tuner(experiment, data, sweep_path, settings.storage_endpoint)
        else:
            tags = {
                **runs.sweep_tags(sweep_path, split.fingerprint, settings.code_version),
                **(tags or {}),
            }
            sizes: dict[str, Scalar] = {
                "data.rows.train": len(split.train),
                "data.rows.val": len(split.val),
                "data.rows.test": len(split.test),
                "data.fingerprint": split.fingerprint,
            }
            source = source_uri(experiment.data, settings.data_dir)
            logged = runs.LoggedData(
                dataset.name, source, split.fingerprint, data.features, data.labels, "training"
            ).as_input()
            parent_run_id = runs.start_parent_run(
                client, experiment_id, run_name, experiment, space_text, tags, sizes, logged
            )
            recorder = TrialRecorder(
                settings.tracking_uri, experiment_id, parent_run_id, experiment.metric,
                experiment.mode, logged, warm.points if warm else None,
            )  # fmt: skip
            tuner = make_tuner(
                experiment, data, settings.storage, run_name, recorder, warm,
                settings.storage_endpoint,
            )  # fmt: skip
        log.info(
            "sweep %s: experiment '%s', parent run %s", sweep_path, experiment_name, parent_run_id
        )
        watch.lap("tracking")
        try:
            results = fit(tuner, experiment, watcher)
            if resume and results.lost_checkpoints:
                log.warning(
                    "%d trial(s) could not resume: the checkpoint Ray's saved state names was "
                    "gone (the driver was killed as Ray replaced it); restarting them from "
                    "their first epoch",
                    results.lost_checkpoints,
                )
                tuner = restore_tuner(
                    experiment, data, sweep_path, settings.storage_endpoint, restart_errored=True
                )
                results = fit(tuner, experiment, watcher)
        except Exception:
            # A full disk surfaces as whatever Ray failed to write or read back last.
            reason = storage.full(settings.storage)
            if reason is None:
                raise
            raise PipelineError(
                f"trial storage {settings.storage} is full ({reason}); free space, then "
                "continue with `tune --resume`"
            ) from None
        if recorder is not None:
            recorder.close()
        watch.lap("sweep")
        if (reason := storage.full(settings.storage)) is not None:
            # Ray carried on (trials that could not write ended errored): say why, once.
            errored = int((results.table.get("state", pd.Series(dtype=str)) == "errored").sum())
            log.warning(
                "trial storage %s is full (%s): %d trial(s) errored and Ray may not have saved "
                "all of the sweep's state; free space before the next sweep",
                settings.storage,
                reason,
                errored,
            )
        interrupted = results.ended < experiment.budget.num_samples
        states = runs.trial_states(client, experiment_id, parent_run_id)
        table = with_states(results.table, states)
        saved = dict(zip(table["trial_id"], table["state"], strict=True)) if len(table) else {}
        # After a crash, what Ray saved is the truth: epochs the dead driver never wrote to
        # MLflow are written now (a normal sweep's writer has written them all).
        histories = results.histories if resume else None
        lost = reconcile_trial_runs(
            client, experiment, experiment_id, parent_run_id, saved, histories
        )
        if lost:
            log.warning("deleted %d run(s) of trials the interrupted sweep never saved", lost)
        best = best_trial(table, experiment.metric, experiment.mode)
        status = "KILLED" if interrupted else "FINISHED"
        # MLflow params are write-once: the best trial is recorded when the sweep completes.
        final_best = None if interrupted else best
        runs.finish_parent_run(
            client, parent_run_id, table, final_best, results.param_names, status
        )
        watch.lap("sweep records")
    except Exception:
        status = "FAILED"
        raise
    finally:
        if recorder is not None:
            recorder.close()
        if parent_run_id is not None:
            runs.close_open_runs(client, experiment_id, parent_run_id, status)
        lock.release()
    if recorder is not None and recorder.errors:
        raise PipelineError(
            f"{len(recorder.errors)} MLflow writes failed, first: {recorder.errors[0]}"
        )
    return SweepResult(
        experiment_name,
        experiment_id,
        parent_run_id,
        table,
        best,
        experiment.metric,
        time.perf_counter() - started,
        recorder.busy_seconds if recorder else 0.0,
        interrupted,
        results.terminated,
    )


def hold_sweep_lock(client: Client, run_name: str) -> StoreLock:
    """Take the sweep's lock (held while its driver lives: see `sweep_lock`)."""
    lock = sweep_lock(client, run_name)
    try:
        lock.acquire()
    except LockHeld as held:
        raise PipelineError(
            f"sweep {run_name} is running now ({held.holder.describe()}); wait for it to end"
        ) from None
    return lock


def sweep_to_resume(settings: Settings, experiment_name: str) -> str:
    """The parent run of the experiment's latest interrupted sweep; an error when none is."""
    experiment_id = None
    if store_exists(settings.tracking_uri):
        client = open_client(settings.tracking_uri)
        experiment_id = find_experiment(client, experiment_name)
    if experiment_id is None:
        raise PipelineError(f"no experiment '{experiment_name}': no interrupted sweep to resume")
    return find_unfinished_sweep(client, experiment_id)[0]


def settle_interrupted(settings: Settings, experiment_name: str, abandon: bool) -> list[str]:
    """Before a new sweep: refuse while the experiment has an interrupted sweep, which `tune
    --resume` would continue; with `abandon`, end those sweeps for good (runs KILLED, trial state
    removed) and return their descriptions."""
    if not store_exists(settings.tracking_uri):  # a new store: nothing to settle, nothing made
        return []
    client = open_client(settings.tracking_uri)
    experiment_id = find_experiment(client, experiment_name)
    waiting = interrupted_sweeps(client, experiment_id) if experiment_id else []
    if waiting and not abandon:
        raise PipelineError(
            f"experiment '{experiment_name}' has an interrupted {describe_sweep(waiting[0])};"
            " continue it with `tune --resume`, or give it up with `tune --abandon`"
        )
    for run in waiting:
        assert experiment_id is not None
        abandon_sweep(client, experiment_id, run)
        storage.remove(run.data.tags[tags.SWEEP_PATH], settings.storage_endpoint)
    return [describe_sweep(run) for run in waiting]


def retrain_and_register(
    settings: Settings,
    experiment_name: str,
    parent_run_id: str | None,
    stopwatch: Stopwatch | None = None,
) -> Registration:
    """Retrain a sweep's best trial (the latest finished sweep's without `parent_run_id`) on
    train + validation, test it once, log it and register it as the challenger.

    On a cluster (a Ray address set) the refit runs there as a Ray task (on a GPU node if the
    space gives trials GPUs), else in this process (on its GPU, if it has one); the model comes
    back here to be logged. `stopwatch` books the retrain, its logging and the registration.
    """
    watch = stopwatch or Stopwatch()
    uri = settings.tracking_uri
    check_tracking_store(uri)
    client = open_client(uri)
    sweep = sweeps.find_sweep(client, experiment_name, parent_run_id)
    dataset, split = load_data(sweep.experiment, settings.data_dir)
    check_same_data(sweep, split)
    experiment = sweep.experiment
    if settings.ray_address:
        cluster.connect(settings.ray_address)
    selection = select_candidate(sweep, dataset, split, bool(settings.ray_address))
    watch.lap("second opinions")
    sweep = replace(
        sweep, best=next(c for c in sweep.candidates if c["trial_id"] == selection.chosen.trial_id)
    )
    hp = Hyperparameters.from_params(sweep.params)
    trial_id = str(sweep.best["trial_id"])
    log.info(
        "retraining trial %s on %d rows for %d epochs",
        trial_id,
        len(split.tuning_rows),
        sweep.epochs,
    )
    arguments = (experiment, hp, sweep.epochs, dataset, split)
    if settings.ray_address:
        resources = experiment.resources
        final = cluster.run_remote(train_and_test, resources.cpus, resources.gpus, *arguments)
    else:
        final = train_and_test(*arguments)
    watch.lap("retrain")
    source = source_uri(experiment.data, settings.data_dir)
    record = log_retrain(uri, sweep, final, dataset, split, source, selection)
    watch.lap("model logging")
    name = experiment.model_name
    version = register_challenger(client, uri, name, sweep, record, split, selection)
    watch.lap("registration")
    return Registration(
        trial_id,
        experiment.metric,
        sweep.score,
        selection.score,
        record.report,
        len(split.test),
        name,
        version,
    )


def select_candidate(
    sweep: sweeps.SweepRecord, dataset: Dataset, split: Split, on_cluster: bool
) -> Selection:
    """The sweep's best few trials each cross-validated again on fresh folds from a fresh seed
    (`retrain.second_opinion`), side by side as Ray tasks on a cluster, else one after another
    here; the best second opinion is retrained. The test rows take no part."""
    experiment = sweep.experiment
    data = refolded(dataset, split, experiment.data, experiment.seed + 1)
    calls = [
        (experiment, Hyperparameters.from_params(runs.hyperparameters_of(c)), int(c["epoch"]), data)
        for c in sweep.candidates
    ]
    log.info("second opinions on the sweep's best %d trials", len(calls))
    if on_cluster:
        resources = experiment.resources
        scores = cluster.run_remote_each(second_opinion, resources.cpus, resources.gpus, calls)
    else:
        scores = [second_opinion(*call) for call in calls]
    opinions = [
        Opinion(str(c["trial_id"]), int(c["epoch"]), float(c[experiment.metric]), score)
        for c, score in zip(sweep.candidates, scores, strict=True)
    ]
    return select(opinions, experiment.metric, experiment.mode)
