"""Tune, retrain and register: a sweep on Ray tracked in MLflow, then (see `retraining`) its
best trial refit on train + validation, tested once and registered as the challenger."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import storage, tags
from pipeline.config import load_experiment
from pipeline.core.checks import checked_split
from pipeline.distributed import cluster
from pipeline.errors import PipelineError
from pipeline.settings import Settings
from pipeline.stopwatch import Stopwatch
from pipeline.tracking.preflight import check_tracking_store, store_exists

if TYPE_CHECKING:
    from pipeline.core.decisions import Selection
    from pipeline.distributed.tuner import SweepWatcher
    from pipeline.workflows.reporting import ReportFiles
    from pipeline.workflows.retraining import Registration
    from pipeline.workflows.sweep import SweepResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneOutcome:
    sweep: SweepResult
    registration: Registration | None  # None: interrupted, or --no-retrain
    report: ReportFiles | None = None  # the sweep's report on its parent run, once drawn


def tune_and_register(
    space: Path,
    settings: Settings,
    *,
    experiment_name: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    abandon: bool = False,
    retrain: bool = True,
    on_sweep: Callable[[SweepResult], None] | None = None,
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
    resumed = sweep_to_resume(settings, name) if resume else None
    # A bad loader or builder stops here, before Ray starts.
    dataset, split = checked_split(experiment, settings.data_dir)
    if not resume:
        for abandoned in settle_interrupted(settings, name, abandon=abandon):
            log.warning("abandoned the interrupted %s", abandoned)
    watch.lap("config and data")
    with cluster.connecting_in_background(settings.ray_address, experiment.code.paths):
        # Imported while Ray starts: the searcher, Tune and MLflow are most of the imports.
        from pipeline.workflows import reporting, retraining, sweep

        watch.lap("imports during ray start")
    job = sweep.SweepJob(
        experiment=experiment,
        experiment_name=name,
        dataset=dataset,
        split=split,
        space_text=space.read_text(),
    )
    result = sweep.run_sweep(job, settings, resume_run=resumed, watcher=watcher, stopwatch=watch)
    if on_sweep is not None:
        on_sweep(result)
    if result.interrupted:
        return TuneOutcome(result, None)
    if result.best is None:
        raise PipelineError("no trial finished without diverging or failing; nothing registered")
    registration = None
    drawn: list[reporting.DrawnReport] = []

    def draw(winner: str, selection: Selection) -> None:
        if report := reporting.draw_report(settings, name, result.parent_run_id, winner, selection):
            drawn.append(report)

    if retrain:  # the report's pictures are drawn while the winner is refit
        registration = retraining.retrain_and_register(
            settings, name, result.parent_run_id, watch, meanwhile=draw
        )
    # A cluster's work is done (or a local Ray's, without a retrain): leave it while the report
    # is finished.
    cluster.disconnect_in_background()
    if registration is not None and drawn:
        report = reporting.finish_report(drawn[0], registration.registered)
    else:
        report = reporting.report_on(settings, name, result.parent_run_id)
    watch.lap("report")
    cluster.wait_disconnected()
    watch.lap("ray stop")
    return TuneOutcome(result, registration, report)


def sweep_to_resume(settings: Settings, experiment_name: str) -> str:
    """The parent run of the experiment's latest interrupted sweep; an error when none is."""
    experiment_id = None
    if store_exists(settings.tracking_uri):
        from pipeline.tracking.resume import find_unfinished_sweep
        from pipeline.tracking.store import find_experiment, open_client

        client = open_client(settings.tracking_uri)
        experiment_id = find_experiment(client, experiment_name)
    if experiment_id is None:
        raise PipelineError(f"no experiment '{experiment_name}': no interrupted sweep to resume")
    return find_unfinished_sweep(client, experiment_id)[0]


def settle_interrupted(settings: Settings, experiment_name: str, *, abandon: bool) -> list[str]:
    """Before a new sweep, and before Ray starts: refuse while the experiment has an interrupted
    sweep, which `tune --resume` would continue; with `abandon`, end those sweeps for good (runs
    KILLED, trial state removed) and return their descriptions."""
    if not store_exists(settings.tracking_uri):  # a new store: nothing to settle, nothing made
        return []
    # MLflow is imported here only for a store that exists; otherwise while Ray starts.
    from pipeline.tracking.resume import abandon_sweep, describe_sweep, interrupted_sweeps
    from pipeline.tracking.store import find_experiment, open_client

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
