"""The HyperOpt search space built from a validated config (no Ray needed to sample it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hyperopt import pyll
from hyperopt.base import JOB_STATE_DONE
from hyperopt.fmin import generate_trials_to_calculate

from pipeline.config import Experiment, flatten_sample, load_experiment
from pipeline.distributed.search import (
    LABEL_PREFIX,
    WarmStart,
    hyperopt_point,
    hyperopt_space,
    make_searcher,
)
from pipeline.distributed.tuner import make_scheduler
from tests.conftest import SPACES


def default_space() -> Experiment:
    return load_experiment(SPACES / "default.yaml")


def test_samples_respect_bounds_types_and_the_conditional_optimizer() -> None:
    experiment = default_space()
    space = hyperopt_space(experiment.params)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        flat = flatten_sample(pyll.stochastic.sample(space, rng=rng))
        seen.add(flat["optimizer"])
        assert 1e-4 <= flat["lr"] <= 0.5
        assert isinstance(flat["hidden_layers"], int) and 1 <= flat["hidden_layers"] <= 3
        assert flat["hidden_units"] in (32, 64, 128, 256)
        assert ("momentum" in flat) == (flat["optimizer"] == "momentum")
        assert ("batch_size" in flat) == (flat["optimizer"] != "gd")
        if "momentum" in flat:
            assert 0.5 <= flat["momentum"] <= 0.99
    assert seen == {"gd", "sgd", "momentum", "adam", "adamw", "rmsprop"}


def test_integer_ends_are_as_likely_as_the_middle() -> None:
    space = hyperopt_space(default_space().params)
    rng = np.random.default_rng(1)
    counts = np.bincount(
        [pyll.stochastic.sample(space, rng=rng)["hidden_layers"] for _ in range(1500)]
    )
    assert counts[1:].min() / counts[1:].max() > 0.8


def test_log_uniform_spreads_over_decades() -> None:
    space = hyperopt_space(default_space().params)
    rng = np.random.default_rng(2)
    logs = [math.log10(pyll.stochastic.sample(space, rng=rng)["lr"]) for _ in range(1000)]
    below = np.mean(np.array(logs) < -2.5)  # [1e-4, 10^-2.5] is 1.5 of 3.7 decades
    assert 0.33 < below < 0.48


def test_warm_start_point_translates_to_hyperopt_labels(tmp_path: Path) -> None:
    experiment = load_experiment(SPACES / "smoke.yaml")
    point = experiment.search.points_to_evaluate[0]
    native = hyperopt_point(experiment.params, point)
    assert all(label.startswith(LABEL_PREFIX) for label in native)
    assert native[f"{LABEL_PREFIX}optimizer"] == 1  # adam is the second option
    assert native[f"{LABEL_PREFIX}optimizer/adam/batch_size"] == 0
    # hyperopt accepts it as a trial to evaluate.
    trials = generate_trials_to_calculate([native])
    trials.refresh()
    assert len(trials.trials) == 1


def test_searcher_and_scheduler_follow_the_config() -> None:
    experiment = load_experiment(SPACES / "smoke.yaml")
    searcher = make_searcher(experiment)
    # TPE learns from each trial's best smoothed score so far, as the sweep ranks trials.
    assert searcher.metric == "best_val_acc" and searcher.mode == "max"
    scheduler = make_scheduler(experiment)
    assert type(scheduler).__name__ == "AsyncHyperBandScheduler"
    fifo = load_experiment(SPACES / "smoke.yaml", ["scheduler.name=fifo"])
    assert type(make_scheduler(fifo)).__name__ == "FIFOScheduler"
    random = load_experiment(SPACES / "smoke.yaml", ["search.algorithm=random"])
    assert random.n_initial_points == random.budget.num_samples


def test_warm_start_runs_its_points_first_and_tpe_learns_from_earlier_results() -> None:
    experiment = load_experiment(SPACES / "smoke.yaml", ["search.points_to_evaluate=[]"])
    champion = {"lr": 0.02, "hidden_layers": 1, "hidden_units": 16, "activation": "tanh"}
    champion |= {"dropout": 0.0, "optimizer": "momentum", "momentum": 0.9, "batch_size": 64}
    # Yesterday's results: good where lr > 0.03, poor elsewhere.
    space = hyperopt_space(experiment.params)
    rng = np.random.default_rng(3)
    earlier = [flatten_sample(pyll.stochastic.sample(space, rng=rng)) for _ in range(12)]
    evaluated = [(p, 0.9 if p["lr"] > 0.03 else 0.1) for p in earlier]
    searcher = make_searcher(experiment, WarmStart([(champion, "champion")], evaluated))
    assert flatten_sample(searcher.suggest("first")) == champion
    # The results sit in hyperopt's trials as finished (loss = -score: hyperopt minimises) ...
    done = [t for t in searcher._hpopt_trials.trials if t["state"] == JOB_STATE_DONE]
    assert sorted(-t["result"]["loss"] for t in done) == sorted(s for _, s in evaluated)
    # ... so TPE models them at once (12 results > 4 random start-up trials) and proposes the
    # region they found good, which the log-uniform prior holds only 26% of.
    proposed = [flatten_sample(searcher.suggest(f"t{i}"))["lr"] for i in range(10)]
    assert sum(lr > 0.03 for lr in proposed) >= 5, proposed  # without the results: 2 of 10
    assert not any(p["lr"] in proposed for p, _ in evaluated), "results are not run again"


def test_random_search_ignores_earlier_results() -> None:
    experiment = load_experiment(SPACES / "smoke.yaml", ["search.algorithm=random"])
    point = experiment.search.points_to_evaluate[0]
    searcher = make_searcher(experiment, WarmStart([], [(point, 0.5)]))
    assert not [t for t in searcher._hpopt_trials.trials if t["state"] == JOB_STATE_DONE]
