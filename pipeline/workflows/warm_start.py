"""Where a night's sweep starts from: the champion's configuration and the previous night's best
ones run first, and the previous night's results taken by TPE as already seen. Points the space
no longer holds are dropped, each with a warning naming the key."""

from __future__ import annotations

import logging

from pipeline import tags
from pipeline.config import Experiment, Scalar, point_from_values
from pipeline.core.decisions import rank_trials
from pipeline.core.trials import TrialRow
from pipeline.distributed.search import WarmStart
from pipeline.tracking import registry
from pipeline.tracking.night_runs import NightRecord
from pipeline.tracking.store import Client
from pipeline.tracking.sweeps import sweep_trials

log = logging.getLogger(__name__)

WARM_FROM_PREVIOUS = 3  # the previous night's best configurations run again first


def warm_start(
    client: Client,
    experiment: Experiment,
    champion: str | None,
    previous: NightRecord | None,
) -> tuple[WarmStart | None, list[str]]:
    """The warm start of a night of `experiment` whose model has `champion` (a version, if
    any), after the `previous` night (if any); and a warning for each point dropped."""
    if champion is None:
        return None, []
    candidates: list[tuple[TrialRow, str]] = []
    source = registry.version_tags(client, experiment.model_name, champion)
    if source.get(tags.PARENT_RUN_ID) and source.get(tags.TRIAL_ID):
        trials = sweep_trials(client, source[tags.PARENT_RUN_ID])
        candidates += [(t, "champion") for t in trials if t.trial_id == source[tags.TRIAL_ID]]
    ranked: list[TrialRow] = []
    if previous is not None:
        trials = sweep_trials(client, previous.run_id)
        ranked = rank_trials(trials, experiment.metric, experiment.mode)
        candidates += [(t, "previous-night") for t in ranked[:WARM_FROM_PREVIOUS]]
    warnings: list[str] = []
    points: list[tuple[dict[str, Scalar], str]] = []
    for trial, origin in candidates:
        where = f"warm start from the {origin} (trial {trial.trial_id})"
        try:
            point = point_from_values(experiment.params, trial.params, where)
        except ValueError as exc:
            warnings.append(f"dropped {exc}")
            log.warning("dropped %s", exc)
            continue
        if point not in [p for p, _ in points]:
            points.append((point, origin))
    evaluated = []
    for trial in ranked:
        try:
            point = point_from_values(experiment.params, trial.params, "")
        except ValueError:
            continue  # counted below
        evaluated.append((point, trial.scored(experiment.metric)[1]))
    if len(evaluated) < len(ranked):
        dropped = len(ranked) - len(evaluated)
        warnings.append(f"{dropped} of the previous night's results are outside this space")
    return WarmStart(points, evaluated), warnings
