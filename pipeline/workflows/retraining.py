"""Retrain and register: a finished sweep's best few trials given a second opinion, the best of
them refit on train + validation, tested once, logged and registered as the challenger."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pipeline.config import Hyperparameters
from pipeline.core.data import Dataset, Split, refolded
from pipeline.core.decisions import Opinion, Selection, select
from pipeline.core.evaluate import TestReport
from pipeline.core.refit import second_opinion, train_and_test
from pipeline.core.sources import experiment_split, source_uri
from pipeline.distributed import cluster
from pipeline.retrain import check_same_data, log_retrain
from pipeline.settings import Settings
from pipeline.stopwatch import Stopwatch
from pipeline.tracking.registry import RegisteredWinner, register_challenger, version_link
from pipeline.tracking.runs import record_winner, run_link
from pipeline.tracking.store import open_client
from pipeline.tracking.sweeps import SweepRecord, find_sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Registration:
    """A retrained best trial, tested once and registered as the challenger."""

    trial_id: str
    trial: str  # its run's name: t07 adam 2x256 ...
    metric: str
    trial_score: float  # on `metric`, in the sweep
    selection_score: float  # on `metric`, its second opinion (fresh folds, fresh seed)
    selection: Selection  # every candidate's sweep score and second opinion, and why
    report: TestReport
    test_rows: int
    model_name: str
    version: str

    @property
    def registered(self) -> RegisteredWinner:
        return RegisteredWinner(self.version, self.trial_id, self.selection)


def retrain_and_register(
    settings: Settings,
    experiment_name: str,
    parent_run_id: str | None,
    stopwatch: Stopwatch | None = None,
    meanwhile: Callable[[str, Selection], None] | None = None,
) -> Registration:
    """Retrain a sweep's best trial (the latest finished sweep's without `parent_run_id`) on
    train + validation, test it once, log it and register it as the challenger.

    The second opinions and then the refit run as Ray tasks wherever this process is joined to
    a Ray (on a GPU node if the space gives trials GPUs): a cluster, or the local Ray its sweep
    started, which it then leaves in the background. The model comes back here to be logged.
    Without a Ray, all runs here, one after another. `meanwhile` is told the winner (its trial
    id, and the selection that chose it) while the refit runs; `stopwatch` books each phase.
    """
    watch = stopwatch or Stopwatch()
    uri = settings.tracking_uri
    client = open_client(uri, patience=settings.outage_timeout)
    sweep = find_sweep(client, experiment_name, parent_run_id)
    experiment = sweep.experiment
    dataset, split = experiment_split(experiment, settings.data_dir)
    check_same_data(sweep, split)
    if settings.ray_address:
        cluster.connect(settings.ray_address, experiment.code.paths)
    on_ray = cluster.connected()
    selection = select_candidate(sweep, dataset, split, on_ray=on_ray)
    watch.lap("second opinions")
    chosen = next(c for c in sweep.candidates if c.trial_id == selection.chosen.trial_id)
    sweep = replace(sweep, best=chosen)
    hp = Hyperparameters.from_params(chosen.params)
    log.info(
        "retraining %s on %d rows for %d epochs, %s",
        chosen.name,
        len(split.tuning_rows),
        sweep.epochs,
        "as a Ray task" if on_ray else "here",
    )
    if on_ray:  # on a worker of the second opinions, whose imports are done
        cpus, gpus = experiment.resources.cpus, experiment.resources.gpus
        refit = cluster.start_remote(
            train_and_test, cpus, gpus, experiment, hp, dataset, split, epochs=sweep.epochs
        )
    if meanwhile is not None:
        meanwhile(chosen.trial_id, selection)
    if on_ray:
        final = cluster.result(refit)
    else:
        final = train_and_test(experiment, hp, dataset, split, epochs=sweep.epochs)
    if not settings.ray_address:  # the local Ray's work is done: it stops while the model is logged
        cluster.disconnect_in_background()
    watch.lap("retrain")
    source = source_uri(experiment.data, settings.data_dir)
    record = log_retrain(
        uri, sweep, final, dataset=dataset, split=split, source=source, selection=selection
    )
    watch.lap("model logging")
    name = experiment.model_name
    version = register_challenger(
        client, uri, name, sweep=sweep, record=record, split=split, selection=selection
    )
    trial = run_link(sweep.experiment_id, record.trial_run_id, chosen.name)
    links = f"{trial} as {version_link(name, version)}"
    if warning := record_winner(client, sweep.parent_run_id, chosen, selection, links=links):
        log.warning("%s", warning)
    watch.lap("registration")
    return Registration(
        trial_id=chosen.trial_id,
        trial=chosen.name,
        selection=selection,
        metric=experiment.metric,
        trial_score=sweep.score,
        selection_score=selection.score,
        report=record.report,
        test_rows=len(split.test),
        model_name=name,
        version=version,
    )


def select_candidate(
    sweep: SweepRecord, dataset: Dataset, split: Split, *, on_ray: bool
) -> Selection:
    """The sweep's best few trials each cross-validated again on fresh folds from a fresh seed
    (`refit.second_opinion`), side by side as Ray tasks `on_ray`, else one after another here;
    the best second opinion is retrained. The test rows take no part."""
    experiment = sweep.experiment
    data = refolded(dataset, split, experiment.data, experiment.seed + 1)
    scored = [c.scored(experiment.metric) for c in sweep.candidates]
    configurations = [
        (Hyperparameters.from_params(c.params), epoch)
        for c, (epoch, _) in zip(sweep.candidates, scored, strict=True)
    ]
    where = "side by side as Ray tasks" if on_ray else "one after another here"
    log.info("second opinions on the sweep's best %d trials, %s", len(configurations), where)
    if on_ray:
        # The longest first (by epochs): the one that starts last, when a slot frees, is short.
        order = sorted(range(len(configurations)), key=lambda i: -configurations[i][1])
        calls: list[dict[str, Any]] = [
            {"hp": configurations[i][0], "epochs": configurations[i][1]} for i in order
        ]
        resources = experiment.resources
        ordered = cluster.run_remote_each(
            second_opinion,
            resources.cpus,
            resources.gpus,
            calls,
            shared={"experiment": experiment, "data": data},
        )
        scores = [ordered[order.index(i)] for i in range(len(configurations))]
    else:
        scores = [second_opinion(experiment, hp, data, epochs=e) for hp, e in configurations]
    opinions = [
        Opinion(c.trial_id, epoch, score, opinion, label=c.label)
        for c, (epoch, score), opinion in zip(sweep.candidates, scored, scores, strict=True)
    ]
    return select(opinions, experiment.metric, experiment.mode)
