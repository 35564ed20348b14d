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

from pipeline import storage, tags
from pipeline.config import Experiment, load_experiment
from pipeline.core.checks import checked_split
from pipeline.distributed import cluster
from pipeline.distributed.tuner import SweepWatcher, can_resume
from pipeline.errors import PipelineError, StoreAway, Terminated
from pipeline.notify import post_json
from pipeline.settings import Settings
from pipeline.tracking import night_runs, promotion, registry, runs
from pipeline.tracking.locks import LockHeld, StoreLock
from pipeline.tracking.night_runs import NightRecord
from pipeline.tracking.preflight import check_tracking_store
from pipeline.tracking.store import Client, ensure_experiment, open_client
from pipeline.workflows.nights import FINAL_OUTCOMES, Night, night_of
from pipeline.workflows.retraining import retrain_and_register
from pipeline.workflows.sweep import SweepJob, SweepResult, run_sweep
from pipeline.workflows.warm_start import warm_start

log = logging.getLogger(__name__)

# The night's scores of its challenger and of the champion, from the gate's candidate and champion.
NIGHT_SCORES = (tags.NIGHT_CHALLENGER_SCORE, tags.NIGHT_CHAMPION_SCORE)
# What a night tells its model version of itself.
VERSION_TAGS = (
    tags.NIGHT_OUTCOME,
    tags.NIGHT_CHANGED,
    tags.NIGHT_FINGERPRINT,
    tags.NIGHT_BEFORE,
    tags.NIGHT_AFTER,
)
KEEP_VERSIONS = 10


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def check_date(text: str) -> str:
    try:
        return Date.fromisoformat(text).isoformat()
    except ValueError:
        raise PipelineError(f"--date {text!r}: expected a date as YYYY-MM-DD") from None


def unrecorded_failure(date: str, experiment: Experiment, error: Exception) -> Night:
    """A failed night the tracking store cannot hear of (it is away): for the webhook alone."""
    return Night(
        date=date,
        model=experiment.model_name,
        outcome="failed",
        run_id=None,
        tags={tags.NIGHT_ERROR: str(error)},
    )


def run_night(
    space: Path,
    settings: Settings,
    actor: str,
    *,
    date: str | None = None,
    min_delta: float = 0.0,
    keep: int = KEEP_VERSIONS,
    webhook_url: str | None = None,
    watcher: SweepWatcher | None = None,
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
        client = open_client(settings.tracking_uri, patience=settings.outage_timeout)
        experiment_id = ensure_experiment(
            client, experiment.name, settings.artifact_root, runs.describe_experiment(experiment)
        )
    except PipelineError as exc:  # nowhere to record it: the webhook still hears of it
        notify(webhook_url, settings, None, unrecorded_failure(date, experiment, exc))
        raise
    job = NightJob(
        client=client,
        settings=settings,
        experiment=experiment,
        experiment_id=experiment_id,
        date=date,
        space=space,
        actor=actor,
        watcher=watcher,
    )
    lock = StoreLock(client, f"nightly.{experiment.name}")
    try:
        lock.acquire()
    except LockHeld as held:
        night = job.record_skipped(held)
        notify(webhook_url, settings, experiment_id, night)
        return night
    store_away = False
    try:
        night = job.run(min_delta, keep, lock.taken_over)
    except StoreAway as exc:  # nothing can be recorded or released: the same night resumes
        store_away = True
        notify(webhook_url, settings, experiment_id, unrecorded_failure(date, experiment, exc))
        raise
    except Exception as exc:  # whatever failed, the night says so before the error surfaces
        notify(webhook_url, settings, experiment_id, job.record_failure(exc))
        raise
    finally:
        if not store_away:
            lock.release()
    if not night.already_done:
        notify(webhook_url, settings, experiment_id, night)
    return night


@dataclass(kw_only=True)
class NightJob:
    """The steps of one night, each resumable from what the runs record."""

    client: Client
    settings: Settings
    experiment: Experiment
    experiment_id: str
    date: str
    space: Path
    actor: str
    watcher: SweepWatcher | None = None
    run_id: str | None = None  # the night's sweep, once known

    @property
    def model(self) -> str:
        return self.experiment.model_name

    @property
    def base_tags(self) -> dict[str, str]:
        return {tags.NIGHT_DATE: self.date, tags.NIGHT_MODEL: self.model}

    def records(self) -> list[NightRecord]:
        return night_runs.night_records(self.client, [self.experiment_id])

    def run(self, min_delta: float, keep: int, taken_over: str | None) -> Night:
        """The night's steps from wherever an earlier attempt left them."""
        if taken_over:
            log.warning("night %s: resuming after a run that died (%s)", self.date, taken_over)
        sweeps = [r for r in self.records() if r.is_sweep]
        tonight = next((r for r in sweeps if r.date == self.date), None)
        if tonight is not None and tonight.tags.get(tags.NIGHT_OUTCOME) in FINAL_OUTCOMES:
            return night_of(tonight, already_done=True)
        previous = next((r for r in sweeps if r.date < self.date and r.status == "FINISHED"), None)
        warnings = self.sweep(tonight, previous)
        assert self.run_id is not None
        record = self.record()
        # The sweep is over: nothing to resume from its trial state.
        storage.remove(record.sweep_path, self.settings.storage_endpoint)
        if runs.recorded_best(record.params, self.experiment.metric) is None:
            return self.finish({tags.NIGHT_OUTCOME: "no-valid-trial"}, warnings)
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
        experiment = self.experiment
        dataset, split = checked_split(experiment, self.settings.data_dir)
        # Ray starts while the night reads what its sweep starts from (see `run_sweep`).
        with cluster.connecting_in_background(self.settings.ray_address, experiment.code.paths):
            job = SweepJob(
                experiment=experiment,
                experiment_name=experiment.name,
                dataset=dataset,
                split=split,
                space_text=self.space.read_text(),
            )
            if tonight is not None and tonight.status != "FAILED":
                if can_resume(tonight.sweep_path, self.settings.storage_endpoint):
                    self.run_id = tonight.run_id
                    log.info("night %s: resuming its sweep %s", self.date, tonight.run_id)
                    result = run_sweep(
                        job, self.settings, resume_run=tonight.run_id, watcher=self.watcher
                    )
                    return self.after_sweep(result)
                # Killed before Ray saved anything: that sweep ran no trial; start the night anew.
                runs.close_open_runs(self.client, self.experiment_id, tonight.run_id, "FAILED")
                runs.set_run_tags(
                    self.client,
                    tonight.run_id,
                    {
                        tags.NIGHT_OUTCOME: "failed",
                        tags.NIGHT_ERROR: "interrupted before its sweep saved any state",
                    },
                )
            previous_fingerprint = previous.tags.get(tags.NIGHT_FINGERPRINT) if previous else None
            changed = (
                "first"
                if previous_fingerprint is None
                else ("no" if previous_fingerprint == split.fingerprint else "yes")
            )
            champion = registry.model_aliases(self.client, self.model).get(registry.CHAMPION)
            warm, warnings = warm_start(self.client, experiment, champion, previous)
            warmed = f"{len(warm.points)} points, {len(warm.evaluated)} results" if warm else "none"
            marks = {
                **self.base_tags,
                tags.NIGHT_FINGERPRINT: split.fingerprint,
                tags.NIGHT_CHANGED: changed,
                tags.NIGHT_BEFORE: champion or "none",
                tags.NIGHT_WARM: warmed,
            }
            result = run_sweep(job, self.settings, warm=warm, marks=marks, watcher=self.watcher)
            self.run_id = result.parent_run_id
            return [*warnings, *self.after_sweep(result)]

    def after_sweep(self, result: SweepResult) -> list[str]:
        if result.interrupted:  # Ctrl-C or SIGTERM: rerunning the night resumes the sweep
            raise Terminated() if result.terminated else KeyboardInterrupt()
        return []

    def record(self) -> NightRecord:
        assert self.run_id is not None
        found = night_runs.night_records(
            self.client, [self.experiment_id], f"attributes.run_id = '{self.run_id}'", 1
        )
        return found[0]

    def register(self, record: NightRecord) -> str:
        """Retrain and register tonight's winner, once: a version found for the sweep is it."""
        version = record.tags.get(tags.NIGHT_VERSION) or registry.version_of_sweep(
            self.client, self.model, record.run_id
        )
        if version is None:
            retrained = retrain_and_register(self.settings, self.experiment.name, record.run_id)
            version = retrained.version
        runs.set_run_tags(self.client, record.run_id, {tags.NIGHT_VERSION: version})
        registry.tag_version(self.client, self.model, version, self.base_tags)
        return version

    def gate(self, version: str, min_delta: float) -> dict[str, str]:
        """The promotion gate on today's test split (as `promote`); its decision as tags."""
        champion = registry.model_aliases(self.client, self.model).get(registry.CHAMPION)
        if champion == version:  # promoted by an attempt that died before recording it
            gate = registry.version_tags(self.client, self.model, version)
            name = tags.test_score(self.experiment.score.name)
            scored = (tags.PROMOTION + tags.gate_score(role, name) for role in tags.GATE_ROLES)
            return {
                tags.NIGHT_OUTCOME: "promoted",
                tags.NIGHT_AFTER: version,
                tags.NIGHT_METRIC: name,
                **{
                    night: gate.get(tag, "")
                    for night, tag in zip(NIGHT_SCORES, scored, strict=True)
                },
            }
        decision = promotion.promote(
            self.client,
            self.settings.tracking_uri,
            self.model,
            cache_dir=self.settings.data_dir,
            actor=self.actor,
            version=int(version),
            min_delta=min_delta,
        )
        scores = dict(
            zip(NIGHT_SCORES, (decision.candidate_report, decision.champion_report), strict=True)
        )
        outcome = {
            tags.NIGHT_OUTCOME: "kept" if decision.action == "kept" else "promoted",
            tags.NIGHT_AFTER: decision.champion_after or "none",
            **{k: f"{r.value:.6f}" for k, r in scores.items() if r is not None},
        }
        if decision.candidate_report is not None:
            outcome[tags.NIGHT_METRIC] = decision.candidate_report.name
        return outcome

    def finish(self, outcome: dict[str, str], warnings: list[str]) -> Night:
        """Record the night's outcome on its run (and version), and return the night."""
        assert self.run_id is not None
        record = self.record()
        trials = sum(
            int(v) for k, v in record.tags.items() if k.startswith(tags.TRIAL_COUNT) and v.isdigit()
        )
        marks = {**outcome, tags.NIGHT_TRIALS: str(trials)}
        best = runs.recorded_best(record.params, self.experiment.metric)
        if best is not None:
            marks[tags.NIGHT_BEST] = f"{best:.6f}"
        runs.set_run_tags(self.client, self.run_id, marks)
        version = record.tags.get(tags.NIGHT_VERSION)
        if version:
            merged = {**record.tags, **marks}
            registry.tag_version(
                self.client,
                self.model,
                version,
                {k: merged[k] for k in VERSION_TAGS if k in merged},
            )
        return replace(night_of(self.record()), warnings=tuple(warnings))

    def record_skipped(self, held: LockHeld) -> Night:
        """A night that found another one of the space running: recorded on a run of its own."""
        marks = {
            **self.base_tags,
            tags.NIGHT_OUTCOME: "skipped-locked",
            tags.NIGHT_ERROR: str(held),
        }
        run_id = runs.record_run(self.client, self.experiment_id, f"night-{self.date}", marks)
        return Night(
            date=self.date, model=self.model, outcome="skipped-locked", run_id=run_id, tags=marks
        )

    def record_failure(self, exc: Exception) -> Night:
        """Record a failed night on its sweep's run (or a run of its own, if none started).
        A store that fails too only costs the record: the night's own error still surfaces."""
        marks = {
            tags.NIGHT_OUTCOME: "failed",
            tags.NIGHT_ERROR: (str(exc) or type(exc).__name__)[:5000],
        }
        try:
            if self.run_id is None:
                marks = {**self.base_tags, **marks}
                self.run_id = runs.record_run(
                    self.client, self.experiment_id, f"night-{self.date}", marks
                )
            else:
                runs.set_run_tags(self.client, self.run_id, marks)
            return night_of(self.record())
        except Exception as failure:
            log.error("could not record the failed night %s: %s", self.date, failure)
            return Night(
                date=self.date, model=self.model, outcome="failed", run_id=self.run_id, tags=marks
            )


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
        "version": night.tag(tags.NIGHT_VERSION),
        "champion_before": night.tag(tags.NIGHT_BEFORE),
        "champion_after": night.tag(tags.NIGHT_AFTER),
        "data_changed": night.tag(tags.NIGHT_CHANGED),
        "trials": int(night.tag(tags.NIGHT_TRIALS) or 0),
        "best_score": night.best_score,
        "metric": night.tag(tags.NIGHT_METRIC),
        "challenger_score": float(night.tag(tags.NIGHT_CHALLENGER_SCORE) or "nan"),
        "champion_score": float(night.tag(tags.NIGHT_CHAMPION_SCORE) or "nan"),
        "error": night.tag(tags.NIGHT_ERROR),
        "runs": link,
    }
    # JSON has no NaN: a score the night does not have is null.
    post_json(url, {k: None if v != v else v for k, v in message.items()})
