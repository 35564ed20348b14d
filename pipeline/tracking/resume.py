"""Interrupted sweeps in the tracking store: which are waiting (their driver gone), resuming one,
giving one up, and making its trial runs say what Ray's saved state says."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.entities import Metric, Run

from pipeline import tags
from pipeline.config import Experiment
from pipeline.core.decisions import TRIAL_STATES, VALID_STATES
from pipeline.errors import PipelineError
from pipeline.tracking.locks import StoreLock
from pipeline.tracking.runs import best_metrics, child_runs, close_open_runs
from pipeline.tracking.store import Client


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


@dataclass(frozen=True)
class Reconciled:
    """The trial runs a resumed sweep deleted, by why; the rest are one per trial."""

    lost: int = 0  # of trials Ray never saved (each ran again under a new trial id)
    restarted: int = 0  # of trials restarted from their first epoch under a new trial id


def reconcile_trial_runs(
    client: Client,
    experiment: Experiment,
    experiment_id: str,
    parent_run_id: str,
    *,
    states: dict[str, str],
    histories: dict[str, list[dict[str, float]]] | None = None,
    restarted: Collection[str] = (),
) -> Reconciled:
    """Make the trial runs say what Ray's sweep state says (`states`: trial id -> state), one
    run per trial: a run left `running` by a killed driver gets its trial's state; the run of a
    trial Ray never saved (started just before a SIGKILL; resumed, its configuration runs under
    a new trial id), or of one of the `restarted` trials (its checkpoint gone, it ran again from
    its first epoch under a new trial id) is tagged `lost` or `restarted` and deleted. With
    `histories` (trial id -> epochs Ray recorded), epochs a killed driver reported to Ray but
    never wrote to MLflow are written, and the best epoch of a trial that ended meanwhile."""
    lost, replaced = 0, 0
    for run in child_runs(client, experiment_id, parent_run_id):
        trial_id = run.data.tags.get(tags.TRIAL_ID)
        if trial_id is None:
            continue
        if trial_id not in states:
            why = "restarted" if trial_id in restarted else "lost"
            client.set_tag(run.info.run_id, tags.TRIAL_STATE, why)
            client.set_terminated(run.info.run_id, "KILLED")
            client.delete_run(run.info.run_id)  # MLflow keeps it, recoverable, out of views
            replaced += why == "restarted"
            lost += why == "lost"
            continue
        if run.data.tags.get(tags.TRIAL_STATE) not in TRIAL_STATES and states[trial_id]:
            client.set_tag(run.info.run_id, tags.TRIAL_STATE, states[trial_id])
        if histories is not None:
            history = histories.get(trial_id, [])
            names = experiment.trial_scores
            missing = missing_epochs(client, run.info.run_id, history, names)
            best_name = f"best_{experiment.metric}"
            if states[trial_id] in VALID_STATES and best_name not in run.data.metrics:
                missing += best_metrics(history, experiment.metric, experiment.mode)
            write_metrics(client, run.info.run_id, missing)
    return Reconciled(lost=lost, restarted=replaced)


def missing_epochs(
    client: Client, run_id: str, history: list[dict[str, float]], names: Sequence[str]
) -> list[Metric]:
    """The epochs of `history` the run lacks (its metrics `names`, the first logged every
    epoch), at the time Ray recorded them."""
    logged = {m.step for m in client.get_metric_history(run_id, names[0])}
    now = time.time()
    return [
        Metric(name, float(epoch[name]), int(epoch.get("timestamp", now) * 1000), step)
        for epoch in history
        if (step := int(epoch["epoch"])) not in logged
        for name in names
    ]


def write_metrics(client: Client, run_id: str, missing: list[Metric]) -> None:
    """Log metrics in batches of MLflow's size limit."""
    for start in range(0, len(missing), 999):
        client.log_batch(run_id, metrics=missing[start : start + 999])
