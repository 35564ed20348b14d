"""Looking back at sweeps: a sweep's report (pictures and one self-contained HTML page, logged
to its parent run) and the list of an experiment's sweeps with what each produced. Needs no
Ray."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import tags
from pipeline.config import Scalar, log_scaled, walk
from pipeline.core.decisions import TRIAL_STATES, Selection, best_trial, rank_trials
from pipeline.core.trials import TrialRow, is_summary, trial_frame
from pipeline.errors import PipelineError
from pipeline.report import Report, Section, SweepData, Winner, build_report, draw_sections
from pipeline.settings import Settings
from pipeline.tracking import runs, sweeps
from pipeline.tracking.preflight import check_tracking_store, store_exists
from pipeline.tracking.registry import RegisteredWinner, winner_of_sweep
from pipeline.tracking.store import Client, open_client

log = logging.getLogger(__name__)

REPORT_PAGE = "report.html"


@dataclass(frozen=True, kw_only=True)
class ReportFiles:
    """Where a sweep's report went."""

    experiment_name: str
    parent_run_id: str
    run_name: str
    artifact_uri: str  # the parent run's report/ folder: report.html and the PNGs
    files: tuple[str, ...]  # the names logged there
    output: Path | None  # the local copy of the page, if one was asked for
    notes: tuple[str, ...] = ()  # sections drawn without a picture, and why


def write_sweep_report(
    settings: Settings,
    experiment_name: str,
    parent_run_id: str | None = None,
    output: Path | None = None,
) -> ReportFiles:
    """Draw the report of a sweep (the experiment's latest finished one without
    `parent_run_id`), log it to the sweep's parent run under `report/` and, with `output`, also
    write the page there."""
    client = connect(settings, experiment_name)
    recorded = sweeps.read_sweep(client, experiment_name, parent_run_id)
    experiment = recorded.experiment
    registered = winner_of_sweep(
        client, experiment.model_name, recorded.parent_run_id, experiment.mode
    )
    report = build_report(sweep_data(recorded, experiment_name, registered))
    return log_sweep_report(client, recorded, experiment_name, report, output)


@dataclass(frozen=True, kw_only=True)
class DrawnReport:
    """A finished sweep's report drawn while its winner is retrained: its pictures, which mark
    the winner, and what its page needs once the winner is registered."""

    client: Client
    experiment_name: str
    recorded: sweeps.RecordedSweep
    sections: tuple[Section, ...]


def draw_report(
    settings: Settings, experiment_name: str, parent_run_id: str, winner: str, selection: Selection
) -> DrawnReport | None:
    """Draw the pictures of a finished sweep's report for its `winner` (chosen by `selection`,
    not registered yet), so that only its page is left once it is (`finish_report`). None if
    they could not be drawn: `report_on` then draws the whole report, and says why it fails."""
    log.info("drawing the report's pictures while the winner is retrained")
    try:
        client = connect(settings, experiment_name)
        recorded = sweeps.read_sweep(client, experiment_name, parent_run_id)
        # The version is on the page alone: the pictures mark the winner's trial.
        to_register = RegisteredWinner(version="", trial_id=winner, selection=selection)
        data = sweep_data(recorded, experiment_name, to_register)
        sections = draw_sections(data)
    except Exception as exc:
        log.debug("drawing the report while the winner retrains failed: %s", exc)
        return None
    return DrawnReport(
        client=client,
        experiment_name=experiment_name,
        recorded=recorded,
        sections=sections,
    )


def finish_report(drawn: DrawnReport, registered: RegisteredWinner) -> ReportFiles | None:
    """Write the page of a report drawn while its winner retrained, now `registered`, and log
    it with the pictures to the sweep's parent run; as `report_on`, a failure is a warning."""
    recorded = drawn.recorded
    try:
        data = sweep_data(recorded, drawn.experiment_name, registered)
        report = build_report(data, drawn.sections)
        return log_sweep_report(drawn.client, recorded, drawn.experiment_name, report)
    except Exception as exc:
        report_failed(exc, drawn.experiment_name, recorded.parent_run_id)
        return None


def log_sweep_report(
    client: Client,
    recorded: sweeps.RecordedSweep,
    experiment_name: str,
    report: Report,
    output: Path | None = None,
) -> ReportFiles:
    """Log the report to its sweep's parent run under `report/` and, with `output`, also write
    its page there."""
    files: dict[str, bytes | str] = {REPORT_PAGE: report.html, **report.pngs}
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(report.html, encoding="utf-8")
        except OSError as exc:
            raise PipelineError(f"cannot write the report to {output}: {exc.strerror}") from None
    uri = sweeps.log_report(client, recorded.parent_run_id, files)
    return ReportFiles(
        experiment_name=experiment_name,
        parent_run_id=recorded.parent_run_id,
        run_name=recorded.run_name,
        artifact_uri=uri,
        files=tuple(files),
        output=output,
        notes=tuple(f"{s.title}: {s.note}" for s in report.sections if s.png is None),
    )


def report_on(settings: Settings, experiment_name: str, parent_run_id: str) -> ReportFiles | None:
    """Draw the finished sweep's report onto its parent run. A report that fails is a warning:
    the sweep and the model it registered stand, and `report` can draw it again."""
    try:
        return write_sweep_report(settings, experiment_name, parent_run_id)
    except Exception as exc:
        report_failed(exc, experiment_name, parent_run_id)
        return None


def report_failed(exc: Exception, experiment_name: str, parent_run_id: str) -> None:
    """Say that a sweep's report failed, and how to draw it again."""
    log.warning(
        "the sweep report failed (%s: %s); draw it again with: python -m pipeline report "
        "--experiment %s --parent-run %s",
        type(exc).__name__,
        exc,
        experiment_name,
        parent_run_id,
    )


def connect(settings: Settings, experiment_name: str) -> Client:
    """A client of the store; a store not made yet has no experiment (and is not made now)."""
    check_tracking_store(settings.tracking_uri)
    if not store_exists(settings.tracking_uri):
        raise PipelineError(f"no MLflow experiment '{experiment_name}'; run a sweep first")
    return open_client(settings.tracking_uri)


def sweep_data(
    recorded: sweeps.RecordedSweep, experiment_name: str, registered: RegisteredWinner | None
) -> SweepData:
    """The report's input: the trial table joined with each trial run's end time (and number,
    for a trial table older than its numbers), which trials may be best by the pipeline's own
    rule (`decisions.rank_trials`), and the trial registered from the sweep."""
    experiment = recorded.experiment
    metric, mode = experiment.metric, experiment.mode
    table = trial_frame(recorded.rows, experiment.trial_scores, metric)
    valid = {row.trial_id for row in rank_trials(recorded.rows, metric, mode)}
    numbers = {t.trial_id: t.number for t in recorded.trials}
    ended = {
        t.trial_id: (t.end_time - recorded.start_time) / 1000
        for t in recorded.trials
        if t.end_time is not None
    }
    order = pd.Series(range(1, len(table) + 1), index=table.index)
    table = table.assign(
        number=table["number"].fillna(table["trial_id"].map(numbers)).fillna(order).astype(int),
        end_seconds=table["trial_id"].map(ended).astype(float),
        valid=table["trial_id"].isin(valid),
    )
    histories = recorded.histories.assign(trial_id=recorded.histories["trial_id"].astype(str))
    return SweepData(
        experiment=experiment_name,
        run_name=recorded.run_name,
        parent_run_id=recorded.parent_run_id,
        started=datetime.fromtimestamp(recorded.start_time / 1000, timezone.utc),
        metric=metric,
        mode=mode,
        seed=experiment.seed,
        params=tuple(c for c in table.columns if c in {n.name for n in walk(experiment.params)}),
        log_params=log_scaled(experiment.params),
        states=TRIAL_STATES,
        trials=table,
        histories=histories,
        best=best_trial(recorded.rows, metric, mode),
        winner=winner_of(recorded.rows, experiment.model_name, registered),
    )


def winner_of(
    rows: list[TrialRow], model_name: str, registered: RegisteredWinner | None
) -> Winner | None:
    """The registered trial's row and selection, if the sweep registered one of its trials."""
    if registered is None:
        return None
    row = next((r for r in rows if r.trial_id == registered.trial_id), None)
    if row is None:
        return None
    return Winner(
        row=row,
        model_version=f"{model_name} version {registered.version}",
        selection=registered.selection,
    )


# --- the experiment's sweeps -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SweepSummary:
    """One sweep of an experiment, in a line: when, how it went, what it produced."""

    started: str  # ISO 8601, UTC
    run_name: str
    parent_run_id: str
    status: str  # the parent run's: FINISHED, RUNNING, KILLED, FAILED
    trials: int
    metric: str
    best_score: float | None  # None until the sweep finished with a valid trial
    best_trial_id: str | None  # the registered trial's (else the sweep's top trial's)
    best_trial: str | None  # its run's name: t07 adam 2x256 ...
    params: dict[str, Scalar] = field(default_factory=dict)  # the winner's hyperparameters
    model: str | None = None
    version: str | None = None  # the newest version registered from the sweep
    aliases: tuple[str, ...] = ()  # that version's aliases now
    decision: str | None = None  # the promotion decision recorded for that version

    @property
    def compact_params(self) -> str:
        """The winner's hyperparameters as `name=value` pairs."""
        return " ".join(f"{name}={compact(value)}" for name, value in self.params.items())

    def record(self) -> dict[str, Any]:
        """The summary as a record whose keys are the fields' names, in order (for CSV and
        JSON)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**record, "params": dict(self.params), "aliases": list(self.aliases)}


def list_sweeps(settings: Settings, experiment_name: str) -> list[SweepSummary]:
    """The experiment's sweeps, newest first, with their best trial and the model version each
    registered (its aliases, and the promotion decision when one was recorded)."""
    client = connect(settings, experiment_name)
    return [summary_of(listing) for listing in sweeps.list_sweeps(client, experiment_name)]


def summary_of(listing: sweeps.SweepListing) -> SweepSummary:
    metric = listing.params.get("metric", "val_acc")
    counts = [int(v) for k, v in listing.tags.items() if k.startswith(tags.TRIAL_COUNT)]
    best = runs.recorded_best(listing.params, metric)
    version = listing.versions[-1] if listing.versions else None
    decision = version.tags.get(tags.PROMOTION + tags.DECISION) if version else None
    # A night records its gate's outcome on its sweep: the decision even if the tag is missing.
    if decision is None and listing.tags.get(tags.NIGHT_OUTCOME) in ("promoted", "kept"):
        decision = listing.tags[tags.NIGHT_OUTCOME]
    started = datetime.fromtimestamp(listing.start_time / 1000, timezone.utc)
    return SweepSummary(
        started=started.isoformat(timespec="seconds"),
        run_name=listing.run_name,
        parent_run_id=listing.run_id,
        status=listing.status,
        trials=sum(counts) if counts else listing.trial_runs,
        metric=metric,
        best_score=best if best is not None and math.isfinite(best) else None,
        best_trial_id=runs.recorded(listing.params, tags.TRIAL_ID),
        best_trial=runs.recorded(listing.params, "name"),
        params=winner_params(listing.params),
        model=version.name if version else None,
        version=version.version if version else None,
        aliases=version.aliases if version else (),
        decision=decision,
    )


def winner_params(params: dict[str, str]) -> dict[str, Scalar]:
    """The registered trial's hyperparameters among a parent run's params (`best.*`, less
    which trial it was and its scores)."""
    named = {
        name.removeprefix(tags.BEST_PARAM): value
        for name, value in params.items()
        if name.startswith(tags.BEST_PARAM)
    }
    return {
        name: scalar(value)
        for name, value in named.items()
        if not is_summary(name) and not name.startswith(tags.selection_score(""))
    }


def scalar(text: str) -> Scalar:
    """An MLflow param (always a string) as the number it was, if it was one."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def compact(value: Scalar) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
