"""One sweep on Ray, tracked in MLflow: a new sweep (its name, lock, parent run and trial writer)
or an interrupted one resumed, run to its end, its trial runs made to agree with what Ray saved
and its trials recorded on its parent run. Also what a new sweep must settle first: the
experiment's interrupted sweeps."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from secrets import token_hex

from pipeline import storage
from pipeline.config import Experiment, Scalar
from pipeline.config.metrics import Mode
from pipeline.core.data import Dataset, Split, TuningData, tuning_data
from pipeline.core.decisions import best_trial, with_states
from pipeline.core.sources import source_uri
from pipeline.core.trials import TrialRow
from pipeline.distributed import cluster
from pipeline.distributed.results import TunerResults
from pipeline.distributed.search import WarmStart
from pipeline.distributed.tuner import (
    SweepWatcher,
    Tuner,
    fit,
    make_tuner,
    restore_tuner,
)
from pipeline.errors import PipelineError, StoreAway
from pipeline.settings import Settings
from pipeline.stopwatch import Stopwatch
from pipeline.tracking import runs
from pipeline.tracking.delivery import deliver_kept_writes, kept_writes
from pipeline.tracking.locks import LockHeld, StoreLock
from pipeline.tracking.resume import (
    find_unfinished_sweep,
    reconcile_trial_runs,
    sweep_lock,
)
from pipeline.tracking.spool import store_name
from pipeline.tracking.store import Client, ensure_experiment, open_client
from pipeline.tracking.trials import TrialRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepJob:
    """What a sweep tunes: the experiment, the MLflow experiment it is tracked in, its data and
    split, and the search-space file's text (kept on the parent run)."""

    experiment: Experiment
    experiment_name: str
    dataset: Dataset
    split: Split
    space_text: str


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    """A sweep as it ended: its runs, its trials and its best trial."""

    experiment_name: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialRow]
    best: TrialRow | None
    metric: str
    mode: Mode
    wall_seconds: float
    tracking_seconds: float  # time the MLflow writer spent in MLflow calls
    tracking_cpu_seconds: float  # of it, the writer's own CPU
    interrupted: bool  # stopped before every trial ended; `tune --resume` continues it
    terminated: bool = False  # stopped by SIGTERM (else, if interrupted, by Ctrl-C)


@dataclass(frozen=True, kw_only=True)
class OpenSweep:
    """A sweep whose parent run is open and whose lock this driver holds."""

    client: Client
    experiment_id: str
    parent_run_id: str
    run_name: str
    path: str  # where Ray keeps its trial state
    lock: StoreLock
    recorder: TrialRecorder | None  # a new sweep's trial writer (a resumed one's is Ray's)


def run_sweep(
    job: SweepJob,
    settings: Settings,
    *,
    resume_run: str | None = None,
    warm: WarmStart | None = None,
    marks: dict[str, str] | None = None,
    watcher: SweepWatcher | None = None,
    stopwatch: Stopwatch | None = None,
) -> SweepResult:
    """Tune the job's experiment on Ray, tracking every trial under one MLflow parent run;
    `watcher` sees the trial events too, `stopwatch` the time of each phase.

    `resume_run` names the parent run of an interrupted sweep to continue. Otherwise a new
    sweep starts, from `warm` if given, its parent run tagged with `marks`."""
    started = time.perf_counter()
    watch = stopwatch or Stopwatch()
    # Everything that can fail for want of a cluster or storage fails before MLflow is written.
    cluster.connect(settings.ray_address, job.experiment.code.paths)
    cluster.check_resources(job.experiment, autoscaling=bool(settings.ray_address))
    cluster.check_storage(settings.storage, settings.storage_endpoint)
    if settings.ray_address:  # a local Ray's workers import what this driver just imported
        cluster.check_code(job.experiment)
    dataset, split = job.dataset, job.split
    log.info(
        "%s: %d rows (%d train, %d val, %d test), %d classes",
        dataset.name,
        len(dataset.labels),
        len(split.train),
        len(split.val),
        len(split.test),
        dataset.num_classes,
    )
    watch.lap("ray start")
    client = open_client(settings.tracking_uri, patience=settings.outage_timeout)
    experiment_id = ensure_experiment(
        client,
        job.experiment_name,
        settings.artifact_root,
        runs.describe_experiment(job.experiment),
    )
    data = tuning_data(job.dataset, job.split, shared_scale=job.experiment.data.shared_scale)
    if resume_run is not None:
        sweep = reopen_sweep(client, experiment_id, resume_run, settings)
    else:
        sweep = open_sweep(job, settings, client, experiment_id, data=data, warm=warm, marks=marks)
    log.info(
        "sweep %s: experiment '%s', parent run %s",
        sweep.path,
        job.experiment_name,
        sweep.parent_run_id,
    )
    status = "KILLED"  # unless it fails, or ends
    store_away = False
    try:
        if resume_run is not None:
            tuner = restore_tuner(
                job.experiment, data, sweep.path, endpoint=settings.storage_endpoint
            )
        else:
            assert sweep.recorder is not None
            tuner = make_tuner(
                job.experiment,
                data,
                storage=settings.storage,
                run_name=sweep.run_name,
                sink=sweep.recorder,
                warm=warm,
                endpoint=settings.storage_endpoint,
            )
        watch.lap("tracking")
        results, restarted = tune_to_end(
            tuner, sweep, settings, experiment=job.experiment, data=data, watcher=watcher
        )
        watch.lap("sweep")
        # The trial writer (this driver's, or the one Ray restored for a resume) gave up on a
        # store that stayed away: nothing more can be written, and the sweep stays resumable.
        kept, spool = kept_writes(settings, sweep.parent_run_id)
        if kept:
            store_away = True
            raise StoreAway(
                f"tracking store {store_name(settings.tracking_uri)} is unreachable: {kept} "
                f"writes kept in {spool}; once it is back, `tune --resume` delivers them and "
                "finishes the sweep (`python -m pipeline sync` delivers them alone)"
            )
        interrupted = results.interrupted or results.ended < job.experiment.budget.num_samples
        trials = record_outcome(
            sweep, job.experiment, results, complete=not interrupted, restarted=restarted
        )
        status = "KILLED" if interrupted else "FINISHED"
        watch.lap("sweep records")
    except Exception:
        status = "FAILED"
        raise
    finally:
        if not store_away:
            runs.close_open_runs(client, experiment_id, sweep.parent_run_id, status)
            sweep.lock.release()
    recorder = sweep.recorder
    if recorder is not None and recorder.errors:
        raise PipelineError(
            f"{len(recorder.errors)} MLflow writes failed, first: {recorder.errors[0]}"
        )
    return SweepResult(
        experiment_name=job.experiment_name,
        experiment_id=experiment_id,
        parent_run_id=sweep.parent_run_id,
        trials=trials,
        best=best_trial(trials, job.experiment.metric, job.experiment.mode),
        metric=job.experiment.metric,
        mode=job.experiment.mode,
        wall_seconds=time.perf_counter() - started,
        tracking_seconds=recorder.busy_seconds if recorder else 0.0,
        tracking_cpu_seconds=recorder.cpu_seconds if recorder else 0.0,
        interrupted=interrupted,
        terminated=results.terminated,
    )


def open_sweep(
    job: SweepJob,
    settings: Settings,
    client: Client,
    experiment_id: str,
    *,
    data: TuningData,
    warm: WarmStart | None,
    marks: dict[str, str] | None,
) -> OpenSweep:
    """A new sweep: its name, its lock, its parent run (settings, data, the space file) and the
    writer of its trial runs."""
    experiment, split = job.experiment, job.split
    # Unique per sweep, not per second: two sweeps started at once never share a folder.
    run_name = f"{experiment.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{token_hex(3)}"
    path = f"{settings.storage.rstrip('/')}/{run_name}"
    lock = hold_sweep_lock(client, run_name)
    sizes: dict[str, Scalar] = {
        "data.rows.train": len(split.train),
        "data.rows.val": len(split.val),
        "data.rows.test": len(split.test),
        "data.fingerprint": split.fingerprint,
    }
    logged = runs.LoggedData(
        name=job.dataset.name,
        source=source_uri(experiment.data, settings.data_dir),
        fingerprint=split.fingerprint,
        rows=len(data.labels),
        input_shape=data.spec.input_shape,
        context="training",
    )
    try:
        parent_run_id = runs.start_parent_run(
            client,
            experiment_id,
            run_name,
            experiment,
            space_text=job.space_text,
            marks={
                **runs.sweep_tags(path, split.fingerprint, settings.code_version),
                **(marks or {}),
            },
            params=sizes,
            data=logged.as_input(),
        )
    except BaseException:
        lock.release()
        raise
    recorder = TrialRecorder(
        settings.tracking_uri,
        experiment_id,
        parent_run_id,
        metric=experiment.metric,
        mode=experiment.mode,
        scores=experiment.trial_scores,
        spool_dir=settings.spool_dir,
        outage_timeout=settings.outage_timeout,
        data=logged,
        warm_points=warm.points if warm else None,
        trials=experiment.budget.num_samples,
    )
    return OpenSweep(
        client=client,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        run_name=run_name,
        path=path,
        lock=lock,
        recorder=recorder,
    )


def reopen_sweep(
    client: Client, experiment_id: str, parent_run_id: str, settings: Settings
) -> OpenSweep:
    """An interrupted sweep, its lock taken, the tracking writes its last driver could not
    deliver delivered, and its parent run running again."""
    parent_run_id, run_name, path = find_unfinished_sweep(client, experiment_id, parent_run_id)
    lock = hold_sweep_lock(client, run_name)
    try:
        delivered = deliver_kept_writes(settings, parent_run_id)
        if delivered.writes:
            log.info("delivered %d tracking writes its last driver kept", delivered.writes)
    except BaseException:
        lock.release()
        raise
    runs.reopen_run(client, parent_run_id)
    return OpenSweep(
        client=client,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        run_name=run_name,
        path=path,
        lock=lock,
        recorder=None,
    )


def tune_to_end(
    tuner: Tuner,
    sweep: OpenSweep,
    settings: Settings,
    *,
    experiment: Experiment,
    data: TuningData,
    watcher: SweepWatcher | None,
) -> tuple[TunerResults, list[str]]:
    """Run the Tuner until the sweep ends or is stopped. Trials of a resumed sweep whose saved
    checkpoint is gone restart from their first epoch, under new trial ids; a full trial
    storage is said as such. The results, and the ids of the trials so restarted; the sweep's
    trial writer has written everything when this returns."""
    restarted: list[str] = []
    try:
        results = fit(tuner, experiment, watcher)
        if sweep.recorder is None and results.lost_checkpoints:
            restarted = results.lost_checkpoints
            log.warning(
                "%d trial(s) could not resume: the checkpoint Ray's saved state names was "
                "gone (the driver was killed as Ray replaced it); restarting them from "
                "their first epoch",
                len(restarted),
            )
            tuner = restore_tuner(
                experiment,
                data,
                sweep.path,
                endpoint=settings.storage_endpoint,
                restart_errored=True,
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
    finally:
        if sweep.recorder is not None:
            sweep.recorder.close()
    if (reason := storage.full(settings.storage)) is not None:
        # Ray carried on (trials that could not write ended errored): say why, once.
        errored = sum(row.state == "errored" for row in results.rows)
        log.warning(
            "trial storage %s is full (%s): %d trial(s) errored and Ray may not have saved "
            "all of the sweep's state; free space before the next sweep",
            settings.storage,
            reason,
            errored,
        )
    return results, restarted


def record_outcome(
    sweep: OpenSweep,
    experiment: Experiment,
    results: TunerResults,
    *,
    complete: bool,
    restarted: list[str],
) -> list[TrialRow]:
    """Make the trial runs agree with what Ray saved (`restarted`: trials that ran again from
    their first epoch under new ids) and record the sweep's trials (and, once it is `complete`,
    its best trial) on its parent run; the trials as they ended."""
    client = sweep.client
    states = runs.trial_states(client, sweep.experiment_id, sweep.parent_run_id)
    trials = with_states(results.rows, states)
    # After a crash, what Ray saved is the truth: epochs the dead driver never wrote to MLflow
    # are written now (a normal sweep's writer has written them all).
    deleted = reconcile_trial_runs(
        client,
        experiment,
        sweep.experiment_id,
        sweep.parent_run_id,
        states={row.trial_id: row.state for row in trials},
        histories=results.histories if sweep.recorder is None else None,
        restarted=restarted,
    )
    if deleted.restarted:
        log.warning(
            "deleted the earlier runs of the %d trial(s) restarted from their first epoch "
            "(their runs now are those of their new trial ids)",
            deleted.restarted,
        )
    if deleted.lost:
        log.warning("deleted %d run(s) of trials the interrupted sweep never saved", deleted.lost)
    # MLflow params are write-once: the best trial is recorded when the sweep completes.
    best = best_trial(trials, experiment.metric, experiment.mode) if complete else None
    status = "FINISHED" if complete else "KILLED"
    runs.finish_parent_run(
        client,
        sweep.parent_run_id,
        trials,
        best=best,
        status=status,
        scores=experiment.trial_scores,
        metric=experiment.metric,
    )
    return trials


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
