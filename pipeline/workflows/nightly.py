"""One night: retune a space on its data as they are today, warm-started from the champion and
the previous night, retrain and register the winner, and promote it only if the gate says so.

Safe unattended: one night of a space at a time (a lock in the tracking store, so across
machines), idempotent per date (a finished night is not redone; an interrupted one resumes its
sweep, and registers at most one version), every night recorded on its runs and versions and
notified, and what it leaves on disk bounded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import registry, storage
from pipeline import tune as tuning
from pipeline.config import Experiment, load_experiment, point_from_values
from pipeline.decisions import rank_trials
from pipeline.errors import PipelineError, Terminated
from pipeline.notify import post_json
from pipeline.settings import Settings
from pipeline.tracking import runs
from pipeline.tracking.locks import LockHeld, StoreLock
from pipeline.tracking.preflight import check_tracking_store
from pipeline.tracking.runs import NIGHT_DATE_TAG, NightRecord
from pipeline.tracking.store import Client, ensure_experiment, open_client
from pipeline.workflows.nights import (
    AFTER,
    BEFORE,
    BEST,
    CHALLENGER_ACC,
    CHAMPION_ACC,
    CHANGED,
    ERROR,
    FINAL_OUTCOMES,
    FINGERPRINT,
    MODEL,
    OUTCOME,
    TRIALS,
    VERSION,
    WARM,
    Night,
    night_of,
)
from pipeline.workflows.tuning import SweepResult, load_data, retrain_and_register, run_sweep

log = logging.getLogger(__name__)

WARM_FROM_PREVIOUS = 3  # the previous night's best configurations run again first
KEEP_VERSIONS = 10


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def check_date(text: str) -> str:
    try:
        return Date.fromisoformat(text).isoformat()
    except ValueError:
        raise PipelineError(f"--date {text!r}: expected a date as YYYY-MM-DD") from None


def run_night(
    space: Path,
    settings: Settings,
    actor: str,
    date: str | None = None,
    min_delta: float = 0.0,
    keep: int = KEEP_VERSIONS,
    webhook_url: str | None = None,
    watcher: tuning.SweepWatcher | None = None,
) -> Night:
    """Run the night `date` (default: today, UTC) of a space, or find it done; `watcher` sees
    its sweep's trial events (a progress display).

    Returns the night; raises PipelineError (after recording and notifying the failure) when it
    failed, KeyboardInterrupt when it was interrupted (rerun to resume).
    """
    date = check_date(date) if date else today()
    if keep < 1:
        raise PipelineError(f"--keep must be at least 1, got {keep}")
    experiment = load_experiment(space)
    try:
        check_tracking_store(settings.tracking_uri)
        client = open_client(settings.tracking_uri)
        experiment_id = ensure_experiment(
            client, experiment.name, settings.artifact_root, runs.describe_experiment(experiment)
        )
    except PipelineError as exc:  # nowhere to record it: the webhook still hears of it
        notify(webhook_url, settings, None, Night(date, experiment.model_name, "failed", None,
                                                  {ERROR: str(exc)}))  # fmt: skip
        raise
    job = NightJob(client, settings, experiment, experiment_id, date, space, actor, watcher)
    lock = StoreLock(client, f"nightly.{experiment.name}")
    try:
        lock.acquire()
    except LockHeld as held:
        night = job.record_skipped(held)
        notify(webhook_url, settings, experiment_id, night)
        return night
    try:
        night = job.run(min_delta, keep, lock.taken_over)
    except Exception as exc:  # whatever failed, the night says so before the error surfaces
        notify(webhook_url, settings, experiment_id, job.record_failure(exc))
        raise
    finally:
        lock.release()
    if not night.already_done:
        notify(webhook_url, settings, experiment_id, night)
    return night


@dataclass
class NightJob:
    """The steps of one night, each resumable from what the runs record."""

    client: Client
    settings: Settings
    experiment: Experiment
    experiment_id: str
    date: str
    space: Path
    actor: str
    watcher: tuning.SweepWatcher | None = None
    run_id: str | None = None  # the night's sweep, once known

    @property
    def model(self) -> str:
        return self.experiment.model_name

    @property
    def base_tags(self) -> dict[str, str]:
        return {NIGHT_DATE_TAG: self.date, MODEL: self.model}

    def records(self) -> list[NightRecord]:
        return runs.night_records(self.client, [self.experiment_id])

    def run(self, min_delta: float, keep: int, taken_over: str | None) -> Night:
        """The night's steps from wherever an earlier attempt left them."""
        if taken_over:
            log.warning("night %s: resuming after a run that died (%s)", self.date, taken_over)
        sweeps = [r for r in self.records() if r.is_sweep]
        tonight = next((r for r in sweeps if r.date == self.date), None)
        if tonight is not None and tonight.tags.get(OUTCOME) in FINAL_OUTCOMES:
            return night_of(tonight, already_done=True)
        previous = next((r for r in sweeps if r.date < self.date and r.status == "FINISHED"), None)
        warnings = self.sweep(tonight, previous)
        assert self.run_id is not None
        record = self.record()
        # The sweep is over: nothing to resume from its trial state.
        storage.remove(record.sweep_path, self.settings.storage_endpoint)
        if f"best_{self.experiment.metric}" not in record.metrics:
            return self.finish({OUTCOME: "no-valid-trial"}, warnings)
        version = self.register(record)
        outcome = self.gate(version, min_delta)
        deleted = registry.prune_versions(self.client, self.settings.tracking_uri, self.model, keep)
        if deleted:
            log.info("deleted versions %s of %s (--keep %d)", ", ".join(deleted), self.model, keep)
        return self.finish(outcome, warnings)

    def sweep(self, tonight: NightRecord | None, previous: NightRecord | None) -> list[str]:
        """Run tonight's sweep, resume it, or find it finished; returns warm-start warnings."""
        if tonight is not None and tonight.status == "FINISHED":
            self.run_id = tonight.run_id
            return []
        dataset, split = load_data(self.experiment, self.settings.data_dir)
        text = self.space.read_text()
        if tonight is not None and tonight.status != "FAILED":
            if tuning.can_resume(tonight.sweep_path, self.settings.storage_endpoint):
                self.run_id = tonight.run_id
                log.info("night %s: resuming its sweep %s", self.date, tonight.run_id)
                result = run_sweep(
                    self.experiment, self.experiment.name, dataset, split, text, self.settings,
                    resume=True, parent_run_id=tonight.run_id, watcher=self.watcher,
                )  # fmt: skip
                return self.after_sweep(result)
            # Killed before Ray saved anything: that sweep ran no trial; start the night anew.
            runs.close_open_runs(self.client, self.experiment_id, tonight.run_id, "FAILED")
            runs.set_run_tags(
                self.client,
                tonight.run_id,
                {OUTCOME: "failed", ERROR: "interrupted before its sweep saved any state"},
            )
        previous_fingerprint = previous.tags.get(FINGERPRINT) if previous else None
        changed = (
            "first"
            if previous_fingerprint is None
            else ("no" if previous_fingerprint == split.fingerprint else "yes")
        )
        champion = registry.model_aliases(self.client, self.model).get(registry.CHAMPION)
        warm, warnings = self.warm_start(champion, previous)
        tags = {
            **self.base_tags,
            FINGERPRINT: split.fingerprint,
            CHANGED: changed,
            BEFORE: champion or "none",
            WARM: f"{len(warm.points)} points, {len(warm.evaluated)} results" if warm else "none",
        }
        result = run_sweep(
            self.experiment, self.experiment.name, dataset, split, text, self.settings,
            warm=warm, tags=tags, watcher=self.watcher,
        )  # fmt: skip
        self.run_id = result.parent_run_id
        return [*warnings, *self.after_sweep(result)]

    def after_sweep(self, result: SweepResult) -> list[str]:
        if result.interrupted:  # Ctrl-C or SIGTERM: rerunning the night resumes the sweep
            raise Terminated() if result.terminated else KeyboardInterrupt()
        return []

    def warm_start(
        self, champion: str | None, previous: NightRecord | None
    ) -> tuple[tuning.WarmStart | None, list[str]]:
        """The champion's configuration and the previous night's best ones, to run first, and
        the previous night's results for TPE; points the space no longer holds are dropped."""
        if champion is None:
            return None, []
        candidates: list[tuple[dict[str, Any], str]] = []
        source = registry.version_tags(self.client, self.model, champion)
        if source.get("parent_run_id") and source.get("trial_id"):
            table = runs.sweep_table(self.client, source["parent_run_id"])
            trial = table[table["trial_id"] == source["trial_id"]]
            candidates += [(r, "champion") for r in records(trial)]
        results: list[tuple[dict[str, Any], float]] = []
        if previous is not None:
            ranked = rank_trials(
                runs.sweep_table(self.client, previous.run_id),
                self.experiment.metric,
                self.experiment.mode,
            )
            rows = records(ranked)
            candidates += [(r, "previous-night") for r in rows[:WARM_FROM_PREVIOUS]]
            results = [(r, float(r[self.experiment.metric])) for r in rows]
        warnings: list[str] = []
        points: list[tuple[dict[str, Any], str]] = []
        for values, origin in candidates:
            where = f"warm start from the {origin} (trial {values.get('trial_id')})"
            try:
                point = point_from_values(
                    self.experiment.params, runs.hyperparameters_of(values), where
                )
            except ValueError as exc:
                warnings.append(f"dropped {exc}")
                log.warning("dropped %s", exc)
                continue
            if point not in [p for p, _ in points]:
                points.append((point, origin))
        evaluated = []
        for values, score in results:
            try:
                point = point_from_values(
                    self.experiment.params, runs.hyperparameters_of(values), ""
                )
                evaluated.append((point, score))
            except ValueError:
                continue  # counted below
        if len(evaluated) < len(results):
            dropped = len(results) - len(evaluated)
            warnings.append(f"{dropped} of the previous night's results are outside this space")
        return tuning.WarmStart(points, evaluated), warnings

    def record(self) -> NightRecord:
        assert self.run_id is not None
        found = runs.night_records(
            self.client, [self.experiment_id], f"attributes.run_id = '{self.run_id}'", 1
        )
        return found[0]

    def register(self, record: NightRecord) -> str:
        """Retrain and register tonight's winner, once: a version found for the sweep is it."""
        version = record.tags.get(VERSION) or registry.version_of_sweep(
            self.client, self.model, record.run_id
        )
        if version is None:
            retrained = retrain_and_register(self.settings, self.experiment.name, record.run_id)
            version = retrained.version
        runs.set_run_tags(self.client, record.run_id, {VERSION: version})
        registry.tag_version(self.client, self.model, version, self.base_tags)
        return version

    def gate(self, version: str, min_delta: float) -> dict[str, str]:
        """The promotion gate on today's test split (as `promote`); its decision as tags."""
        champion = registry.model_aliases(self.client, self.model).get(registry.CHAMPION)
        if champion == version:  # promoted by an attempt that died before recording it
            tags = registry.version_tags(self.client, self.model, version)
            return {
                OUTCOME: "promoted",
                AFTER: version,
                CHALLENGER_ACC: tags.get("promotion.candidate_test_acc", ""),
                CHAMPION_ACC: tags.get("promotion.champion_test_acc", ""),
            }
        decision = registry.promote(
            self.client,
            self.settings.tracking_uri,
            self.model,
            self.settings.data_dir,
            self.actor,
            int(version),
            force=False,
            min_delta=min_delta,
        )
        scores = {
            CHALLENGER_ACC: decision.candidate_report,
            CHAMPION_ACC: decision.champion_report,
        }
        return {
            OUTCOME: "kept" if decision.action == "kept" else "promoted",
            AFTER: decision.champion_after or "none",
            **{k: f"{r.test_acc:.6f}" for k, r in scores.items() if r is not None},
        }

    def finish(self, tags: dict[str, str], warnings: list[str]) -> Night:
        """Record the night's outcome on its run (and version), and return the night."""
        assert self.run_id is not None
        record = self.record()
        trials = sum(
            int(v) for k, v in record.tags.items() if k.startswith("trials.") and v.isdigit()
        )
        tags = {**tags, TRIALS: str(trials)}
        best = record.metrics.get(f"best_{self.experiment.metric}")
        if best is not None:
            tags[BEST] = f"{best:.6f}"
        runs.set_run_tags(self.client, self.run_id, tags)
        version = record.tags.get(VERSION)
        if version:
            night_tags = (OUTCOME, CHANGED, FINGERPRINT, BEFORE, AFTER)
            merged = {**record.tags, **tags}
            registry.tag_version(
                self.client, self.model, version, {k: merged[k] for k in night_tags if k in merged}
            )
        return replace(night_of(self.record()), warnings=tuple(warnings))

    def record_skipped(self, held: LockHeld) -> Night:
        """A night that found another one of the space running: recorded on a run of its own."""
        tags = {**self.base_tags, OUTCOME: "skipped-locked", ERROR: str(held)}
        run_id = runs.record_run(self.client, self.experiment_id, f"night-{self.date}", tags)
        return Night(self.date, self.model, "skipped-locked", run_id, tags)

    def record_failure(self, exc: Exception) -> Night:
        """Record a failed night on its sweep's run (or a run of its own, if none started).
        A store that fails too only costs the record: the night's own error still surfaces."""
        tags = {OUTCOME: "failed", ERROR: (str(exc) or type(exc).__name__)[:5000]}
        try:
            if self.run_id is None:
                tags = {**self.base_tags, **tags}
                self.run_id = runs.record_run(
                    self.client, self.experiment_id, f"night-{self.date}", tags
                )
            else:
                runs.set_run_tags(self.client, self.run_id, tags)
            return night_of(self.record())
        except Exception as failure:
            log.error("could not record the failed night %s: %s", self.date, failure)
            return Night(self.date, self.model, "failed", self.run_id, tags)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A trial table's rows as mappings."""
    return [{str(k): v for k, v in row.items()} for row in table.to_dict("records")]


def notify(url: str | None, settings: Settings, experiment_id: str | None, night: Night) -> None:
    """One message per night to the webhook, if one is set; never fails the night."""
    if not url:
        return
    link = None
    if settings.tracking_uri.startswith(("http://", "https://")) and night.run_id and experiment_id:
        base = settings.tracking_uri.rstrip("/")
        link = f"{base}/#/experiments/{experiment_id}/runs/{night.run_id}"
    message = {
        "night": night.date,
        "model": night.model,
        "outcome": night.outcome,
        "version": night.tag(VERSION),
        "champion_before": night.tag(BEFORE),
        "champion_after": night.tag(AFTER),
        "data_changed": night.tag(CHANGED),
        "trials": int(night.tag(TRIALS) or 0),
        "best_score": night.best_score,
        "challenger_test_acc": float(night.tag(CHALLENGER_ACC) or "nan"),
        "champion_test_acc": float(night.tag(CHAMPION_ACC) or "nan"),
        "error": night.tag(ERROR),
        "runs": link,
    }
    # JSON has no NaN: a score the night does not have is null.
    post_json(url, {k: None if v != v else v for k, v in message.items()})
