"""The search: the space in HyperOpt's terms, warm starts, and TPE (or random search) seeded
from the experiment."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hyperopt import hp, rand, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_VALID_STATES, Domain, Trials
from hyperopt.fmin import generate_trial
from hyperopt.pyll import scope
from ray.tune.search.hyperopt import HyperOptSearch

from pipeline.config import (
    ChoiceParam,
    ConditionalOption,
    Experiment,
    FloatParam,
    IntParam,
    ParamSpec,
    Scalar,
    SpaceNode,
    active_params,
    option_name,
    walk,
)

# Hyperopt labels carry this prefix so that they never equal a key of the space: Ray would then
# try to translate warm-start values itself, which it cannot do for conditional options.
LABEL_PREFIX = "hp:"


def hyperopt_space(params: dict[str, ParamSpec]) -> dict[str, Any]:
    """The search space as hyperopt expressions; a conditional option becomes a nested dict."""
    nodes = list(walk(params))

    def level(under: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        return {node.name: expression(node) for node in nodes if node.under == under}

    def expression(node: SpaceNode) -> Any:
        label, spec = f"{LABEL_PREFIX}{node.path}{node.name}", node.spec
        if isinstance(spec, FloatParam):
            return float_expression(label, spec)
        if isinstance(spec, IntParam):
            return int_expression(label, spec)
        if not isinstance(spec, ChoiceParam):
            return spec
        if not any(isinstance(o, ConditionalOption) for o in spec.values):
            return hp.choice(label, spec.values)
        options = [
            {"name": name, **level((*node.under, (node.name, str(name))))}
            for name in map(option_name, spec.values)
        ]
        return hp.choice(label, options)

    return level(())


def float_expression(label: str, spec: FloatParam) -> Any:
    if spec.log:
        return hp.loguniform(label, math.log(spec.low), math.log(spec.high))
    if spec.step is not None:
        return hp.quniform(label, spec.low, spec.high, spec.step)
    return hp.uniform(label, spec.low, spec.high)


def int_expression(label: str, spec: IntParam) -> Any:
    if spec.log:
        expression = hp.qloguniform(label, math.log(spec.low), math.log(spec.high), spec.step)
    else:
        # Widened by half a step so that both ends are as likely as the values between them.
        half = spec.step / 2
        expression = hp.quniform(label, spec.low - half, spec.high + half, spec.step)
    return scope.int(scope.minimum(scope.maximum(expression, spec.low), spec.high))


def hyperopt_point(params: dict[str, ParamSpec], point: dict[str, Scalar]) -> dict[str, Any]:
    """A warm-start point (parameter values) in hyperopt's terms: labels, indices for choices."""
    native: dict[str, Any] = {}
    for node in active_params(params, point):
        label = f"{LABEL_PREFIX}{node.path}{node.name}"
        if isinstance(node.spec, ChoiceParam):
            native[label] = [option_name(o) for o in node.spec.values].index(point[node.name])
        else:
            native[label] = point[node.name]
    return native


@dataclass(frozen=True)
class WarmStart:
    """Where a sweep starts from: configurations to run first (each with where it came from),
    and earlier results that TPE takes as already seen."""

    points: list[tuple[dict[str, Scalar], str]]  # (point, source), run before the space's own
    evaluated: list[tuple[dict[str, Scalar], float]]  # (point, its score on the metric)


class ConditionalHyperOptSearch(HyperOptSearch):
    """HyperOptSearch that can start from earlier results, and whose warm-start points may leave
    out parameters of options not chosen.

    `evaluated` points enter hyperopt's trials as finished ones with their scores: TPE models
    them from its first suggestion (they count towards its random start-up trials) and they are
    not run again. Ray's HyperOptSearch (2.60) has no such input; only its Optuna and HEBO
    searchers take earlier results.

    TPE expects every label in a trial's `misc.idxs` (an empty list when inactive), but hyperopt's
    `generate_trial` writes only the labels a point gives, so TPE's first model fails with a
    KeyError on a conditional space. Pad the missing labels.
    """

    def __init__(
        self,
        *,
        n_initial_points: int,
        evaluated: list[tuple[dict[str, Any], float]] | None = None,
        **kwargs: Any,
    ) -> None:
        self._evaluated = evaluated or []  # read by _setup_hyperopt, which __init__ calls
        super().__init__(n_initial_points=n_initial_points, **kwargs)
        self.algo = RandomUntil(n_initial_points)  # type: ignore[has-type]  # Ray's is untyped

    def _setup_hyperopt(self) -> None:
        super()._setup_hyperopt()
        assert self.domain is not None
        trials = self._hpopt_trials = AppendOnlyTrials.of(self._hpopt_trials)
        if self._evaluated:
            tids = trials.new_trial_ids(len(self._evaluated))
            docs = []
            for tid, (point, score) in zip(tids, self._evaluated, strict=True):
                doc = generate_trial(tid, point)
                doc["state"] = JOB_STATE_DONE
                doc["result"] = {"loss": self.metric_op * score, "status": "ok"}
                docs.append(doc)
            trials.insert_trial_docs(docs)
        for trial in trials._dynamic_trials:
            for label in self.domain.params:
                trial["misc"]["idxs"].setdefault(label, [])
                trial["misc"]["vals"].setdefault(label, [])
        trials.refresh()


class AppendOnlyTrials(Trials):  # type: ignore[misc]  # hyperopt is untyped
    """hyperopt's trials, whose `refresh` reads only the trials added since the last one.

    Ray's searcher refreshes them three times per trial, and hyperopt's own `refresh` reads
    every trial each time: random suggestions then grew from 0.76 ms in the first tenth of
    1,000 trials to 0.98 ms in the last (median), and stay at 0.75-0.78 ms so. What a full read
    would find is the same: Ray adds trials, and moves them between the states a refresh keeps
    (new, running, done, error), never to one it drops."""

    @classmethod
    def of(cls, trials: Trials) -> AppendOnlyTrials:
        """These trials (as Ray's searcher made them) as append-only ones."""
        kept = cls()
        kept.insert_trial_docs(trials._dynamic_trials)
        kept._ids.update(trials._ids)
        kept.refresh()
        return kept

    def refresh(self) -> None:
        read = getattr(self, "_read", 0)
        if self._exp_key is not None or read > len(self._dynamic_trials):
            super().refresh()  # not the way Ray uses them: read them all
            self._read = len(self._dynamic_trials)
            return
        if read == 0:
            self._trials: list[dict[str, Any]] = []
        added = self._dynamic_trials[read:]
        self._trials.extend(t for t in added if t["state"] in JOB_VALID_STATES)
        self._ids.update(t["tid"] for t in added if t["state"] in JOB_VALID_STATES)
        self._read = len(self._dynamic_trials)


@dataclass(frozen=True)
class RandomUntil:
    """TPE's suggestion (`tpe.suggest`), drawn at random (`rand.suggest`, seeded alike) while
    fewer than `n_startup_jobs` trials were suggested, as TPE does itself, but without building
    its model and reading every earlier trial first: a random suggestion took 4.96 ms in the
    first tenth of 1,000 and 5.64 ms in the last that way, 0.76 and 0.92 ms without. A class,
    not a closure: Ray pickles the searcher with the sweep's state."""

    n_startup_jobs: int

    def __call__(self, new_ids: list[int], domain: Domain, trials: Trials, seed: int) -> Any:
        # TPE counts a trial per suggestion, whatever its state: those Ray's trials hold.
        if len(trials.trials) < self.n_startup_jobs:
            return rand.suggest(new_ids, domain, trials, seed)
        return tpe.suggest(new_ids, domain, trials, seed, n_startup_jobs=self.n_startup_jobs)


def make_searcher(experiment: Experiment, warm: WarmStart | None = None) -> HyperOptSearch:
    """TPE over the space (random search: every trial drawn before TPE would start), seeded;
    warm-start points run first, and earlier results inform TPE (not random search)."""
    points = [p for p, _ in warm.points] if warm else []
    points += [p for p in experiment.search.points_to_evaluate if p not in points]
    evaluated = warm.evaluated if warm and experiment.search.algorithm == "tpe" else []
    return ConditionalHyperOptSearch(
        space=hyperopt_space(experiment.params),
        # A trial's best score so far (see `run_trial`), not its last epoch's: the score that
        # ranks it, and the one warm starts give for earlier trials.
        metric=f"best_{experiment.metric}",
        mode=experiment.mode,
        points_to_evaluate=[hyperopt_point(experiment.params, p) for p in points] or None,
        n_initial_points=experiment.n_initial_points,
        random_state_seed=experiment.seed,
        evaluated=[(hyperopt_point(experiment.params, p), score) for p, score in evaluated],
    )
