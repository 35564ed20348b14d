"""Reading sweeps back out of the tracking store: a finished sweep with its best trials (for the
retrain), a sweep's trial table, its trial runs' histories and times (for its report), the
experiment's sweeps with the model versions they produced; and logging a report's files to the
sweep's parent run."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from pipeline import tags
from pipeline.config import Experiment, parse_experiment
from pipeline.config.metrics import VAL_LOSS
from pipeline.core.decisions import CANDIDATES, rank_trials
from pipeline.core.trials import TrialRow, read_trials_csv
from pipeline.errors import PipelineError
from pipeline.tracking import runs
from pipeline.tracking.store import Client, experiment_id

REPORT_FOLDER = "report"  # the report's artifact folder on the parent run


@dataclass(frozen=True, kw_only=True)
class TrialRun:
    """A trial's run: its number in the searcher's order, state and times (ms since the epoch)."""

    trial_id: str
    number: int | None
    state: str
    start_time: int
    end_time: int | None  # None: never ended


@dataclass(frozen=True, kw_only=True)
class RecordedSweep:
    """A sweep as the store holds it: its parent run, settings, trial table and trial runs."""

    experiment_id: str
    parent_run_id: str
    run_name: str
    status: str
    start_time: int  # ms since the epoch
    experiment: Experiment
    rows: list[TrialRow]  # trials.csv
    trials: list[TrialRun]
    histories: pd.DataFrame  # trial_id, epoch, and the `history_metrics` of `experiment`


def latest_sweep(client: Client, experiment_id: str, finished: bool) -> Run | None:
    """The experiment's most recently started sweep (only finished ones if `finished`)."""
    query = f"tags.{tags.SWEEP_PATH} != ''"
    if finished:
        query += " and attributes.status = 'FINISHED'"
    found = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0] if found else None


def sweep_run(client: Client, experiment_name: str, parent_run_id: str | None) -> Run:
    """The named sweep's parent run, or the experiment's latest finished sweep's."""
    experiment = experiment_id(client, experiment_name)
    if parent_run_id is None:
        run = latest_sweep(client, experiment, finished=True)
        if run is None:
            raise PipelineError(f"experiment '{experiment_name}' has no finished sweep")
        return run
    try:
        run = client.get_run(parent_run_id)
    except MlflowException:
        raise PipelineError(f"no run '{parent_run_id}' in the tracking store") from None
    if run.info.experiment_id != experiment or tags.SWEEP_PATH not in run.data.tags:
        raise PipelineError(
            f"run '{parent_run_id}' is not a sweep of experiment '{experiment_name}'"
        )
    return run


def recorded_settings(client: Client, run: Run) -> tuple[Experiment, list[TrialRow]]:
    """The sweep's resolved config (config.json) and its trial table (trials.csv), which its
    parent run holds once the sweep has ended."""
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        try:
            config = Path(client.download_artifacts(run_id, "config.json", folder)).read_text()
            trials = read_trials_csv(client.download_artifacts(run_id, "trials.csv", folder))
        except (MlflowException, OSError):
            raise PipelineError(
                f"sweep {run_id} has no trial table yet ({run.info.status}): it is running or "
                "was interrupted; resume it with `python -m pipeline tune --resume` first"
            ) from None
    return parse_experiment(json.loads(config), f"run {run_id}: config.json"), trials


def sweep_trials(client: Client, parent_run_id: str) -> list[TrialRow]:
    """The trials a finished sweep recorded (its trials.csv), one row each."""
    with tempfile.TemporaryDirectory() as folder:
        return read_trials_csv(client.download_artifacts(parent_run_id, "trials.csv", folder))


@dataclass(frozen=True, kw_only=True)
class SweepRecord:
    """A finished sweep as MLflow recorded it: its settings and its best valid trials."""

    experiment_id: str
    parent_run_id: str
    run_name: str
    experiment: Experiment
    data_fingerprint: str
    best: TrialRow  # the trial to retrain: the sweep's best, or the candidate chosen
    candidates: tuple[TrialRow, ...]  # the best few valid trials, best first

    @property
    def epochs(self) -> int:
        """The epoch at which the best trial scored best: the retrain trains exactly this many."""
        return self.best.scored(self.experiment.metric)[0]

    @property
    def score(self) -> float:
        """The best trial's score on the sweep's metric."""
        return self.best.scored(self.experiment.metric)[1]


def find_sweep(client: Client, experiment_name: str, parent_run_id: str | None) -> SweepRecord:
    """A finished sweep (see `sweep_run` for which) with its best few valid trials."""
    run = sweep_run(client, experiment_name, parent_run_id)
    run_id = run.info.run_id
    if run.info.status != "FINISHED":
        raise PipelineError(
            f"sweep {run_id} did not finish ({run.info.status}); resume it with "
            "`python -m pipeline tune --resume` first"
        )
    settings, trials = recorded_settings(client, run)
    candidates = tuple(rank_trials(trials, settings.metric, settings.mode)[:CANDIDATES])
    if not candidates:
        raise PipelineError(
            f"sweep {run_id} has no trial that completed or stopped without diverging or "
            "failing; nothing to retrain or register"
        )
    return SweepRecord(
        experiment_id=run.info.experiment_id,
        parent_run_id=run_id,
        run_name=run.info.run_name,
        experiment=settings,
        data_fingerprint=run.data.tags.get(tags.DATA_FINGERPRINT, ""),
        best=candidates[0],
        candidates=candidates,
    )


def read_sweep(client: Client, experiment_name: str, parent_run_id: str | None) -> RecordedSweep:
    """Everything a report shows of a sweep (see `sweep_run` for which), read from the store."""
    run = sweep_run(client, experiment_name, parent_run_id)
    run_id = run.info.run_id
    experiment, rows = recorded_settings(client, run)
    names = history_metrics(experiment)
    trials, histories = [], []
    for child in runs.child_runs(client, run.info.experiment_id, run_id):
        marks = child.data.tags
        if tags.TRIAL_ID not in marks:  # the retrain run
            continue
        number = marks.get(tags.TRIAL_NUMBER)
        trials.append(
            TrialRun(
                trial_id=marks[tags.TRIAL_ID],
                number=int(number) if number else None,
                state=marks.get(tags.TRIAL_STATE, ""),
                start_time=child.info.start_time,
                end_time=child.info.end_time,
            )
        )
        histories.append(metric_histories(client, child.info.run_id, marks[tags.TRIAL_ID], names))
    columns = ["trial_id", "epoch", *names]
    return RecordedSweep(
        experiment_id=run.info.experiment_id,
        parent_run_id=run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        experiment=experiment,
        rows=rows,
        trials=trials,
        histories=pd.concat(histories, ignore_index=True)
        if histories
        else pd.DataFrame(columns=columns),
    )


def history_metrics(experiment: Experiment) -> tuple[str, ...]:
    """The per-epoch metrics a report draws: the sweep's metric and the validation loss."""
    return tuple(dict.fromkeys((experiment.metric, VAL_LOSS)))


def metric_histories(
    client: Client, run_id: str, trial_id: str, names: tuple[str, ...]
) -> pd.DataFrame:
    """A trial's metrics `names` per epoch (one row per epoch it reached)."""
    logged = runs.logged_epochs(client, run_id, names)
    epochs = pd.DataFrame(logged, columns=["epoch", *names])
    return epochs.assign(epoch=epochs["epoch"].astype(int), trial_id=trial_id)


def log_report(client: Client, parent_run_id: str, files: dict[str, bytes | str]) -> str:
    """Log the report's files to the parent run under `report/`, replacing an earlier report's;
    returns the folder's artifact URI."""
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            path = Path(folder, name)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_bytes(content)
        client.log_artifacts(parent_run_id, folder, REPORT_FOLDER)
    return f"{client.get_run(parent_run_id).info.artifact_uri}/{REPORT_FOLDER}"


# --- the experiment's sweeps ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersionRecord:
    """A model version registered from a sweep, with its aliases and tags."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class SweepListing:
    """A sweep's parent run as recorded: params (settings, sweep_best.*, best.*), tags, and the
    model versions registered from it."""

    run_id: str
    run_name: str
    status: str
    start_time: int  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    trial_runs: int  # child runs of trials: the count while the sweep has no trials.* tags
    versions: list[ModelVersionRecord]


def list_sweeps(client: Client, experiment_name: str) -> list[SweepListing]:
    """The experiment's sweeps, newest first, each with the versions registered from it."""
    experiment = experiment_id(client, experiment_name)
    found = runs.search_all(
        client, experiment, f"tags.{tags.SWEEP_PATH} != ''", ["attributes.start_time DESC"]
    )
    aliases: dict[str, dict[str, list[str]]] = {}  # model -> version -> its aliases
    listings = []
    for run in found:
        marks = dict(run.data.tags)
        counted = any(key.startswith(tags.TRIAL_COUNT) for key in marks)
        listings.append(
            SweepListing(
                run_id=run.info.run_id,
                run_name=run.info.run_name,
                status=run.info.status,
                start_time=run.info.start_time,
                params=dict(run.data.params),
                tags=marks,
                trial_runs=0 if counted else trial_run_count(client, experiment, run.info.run_id),
                versions=sweep_versions(client, run.info.run_id, aliases),
            )
        )
    return listings


def trial_run_count(client: Client, experiment_id: str, parent_run_id: str) -> int:
    children = runs.child_runs(client, experiment_id, parent_run_id)
    return sum(tags.TRIAL_ID in child.data.tags for child in children)


def sweep_versions(
    client: Client, parent_run_id: str, aliases: dict[str, dict[str, list[str]]]
) -> list[ModelVersionRecord]:
    """The model versions tagged with the sweep's parent run id, oldest first; `aliases` caches
    each model's aliases (a search of versions does not return them)."""
    found = client.search_model_versions(f"tags.{tags.PARENT_RUN_ID} = '{parent_run_id}'")
    records = []
    for version in sorted(found, key=lambda v: int(v.version)):
        if version.name not in aliases:
            by_version: dict[str, list[str]] = {}
            for alias, number in client.get_registered_model(version.name).aliases.items():
                by_version.setdefault(str(number), []).append(str(alias))
            aliases[version.name] = by_version
        number = str(version.version)
        records.append(
            ModelVersionRecord(
                version.name,
                number,
                tuple(sorted(aliases[version.name].get(number, []))),
                dict(version.tags),
            )
        )
    return records
