"""Benchmark: is the registered model as good as the sweep says, and does the search pay?

Each run is `python -m pipeline tune --space search_spaces/default.yaml --set seed=S` (the
default space: an MLP on scikit-learn's bundled digits, 5-fold cross-validation over the 1,527
train + validation rows, 40 trials of at most 40 epochs, TPE after 20 random trials, ASHA with
grace period 3 and reduction factor 3, 2 trials at a time), end to end (sweep, retrain on train +
validation, one test on the 270 held-out rows, registration), from a fresh process in a fresh
folder (its own mlruns/ store), for every seed (default 0, 1, 2; the seed also draws the split,
so each seed has other test rows). Three ways, the same budget each:

    tpe     the default space as it is (TPE + ASHA)
    random  search.algorithm=random (random search + ASHA)
    fifo    scheduler.name=fifo (TPE, every trial trains all its epochs)

Printed per run: the selection score the registered model was recorded with (the retrain run's
`selection_<metric>`, its second opinion on fresh folds), its test accuracy with the 95%
interval and loss, the gap (selection - test), the sweep's best score (the parent run's
`best_<metric>`), the epochs all trials trained together (trials.csv's `epochs_trained`) and the
command's seconds. Then the bars:

    tpe:    test_acc mean over seeds >= 0.980 and none below 0.975; |gap| <= 1 point per seed;
            the command <= 300 s (the slowest seed)
    random: TPE's best score >= random's in at least 2 of the seeds
    fifo:   ASHA trains <= 40% of FIFO's epochs (summed over seeds) with a best score within 0.5
            points of FIFO's (means over seeds)

A fourth way, `single`, runs the default space with one validation split instead of
cross-validation (data.cv_folds unset, val_fraction and test_fraction 0.2, 32 trials): its bar
is the selection score's honesty, each seed's selection score inside its test accuracy's 95%
interval and the mean |selection - test| within 1 point.

A fifth way, `regression`, tunes search_spaces/diabetes.yaml (an MLP regression on the 442
diabetes patients bundled with scikit-learn, ranked on val_rmse) and fits what a user tries first
on the very same split (train + validation rows; the same test rows): scikit-learn's `RidgeCV`
(alphas 1e-3 .. 1e3) and `HistGradientBoostingRegressor` (defaults). Printed per seed: our
selection score and test RMSE, the gap, and the two baselines' test RMSE. Bars (means over
seeds): our test RMSE below RidgeCV's, and at most 1.10 x gradient boosting's.

A bar whose ways were not run is not judged. It takes tens of minutes on 2 cores (FIFO is the
slow way); it is a benchmark, not a test.

    .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--ways tpe random fifo] [--keep]
        [--check]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, passed, run_timed, user_env

DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
REGRESSION_SPACE = ROOT / "search_spaces" / "diabetes.yaml"
WAYS = {
    "tpe": [],
    "random": ["search.algorithm=random"],
    "fifo": ["scheduler.name=fifo"],
    # One validation split, no cross-validation: the shape most users' first space has.
    "single": [
        "data.cv_folds=null",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "budget.num_samples=32",
    ],
    "regression": [],
}
GOAL_RIDGE_RATIO = 1.0  # our test RMSE over RidgeCV's: below it
GOAL_BOOSTING_RATIO = 1.10  # over gradient boosting's: within 10%
GOAL_MEAN_TEST_ACC = 0.980
GOAL_MIN_TEST_ACC = 0.975
GOAL_GAP = 0.01
GOAL_SECONDS = 300.0
GOAL_ASHA_EPOCH_SHARE = 0.40
GOAL_ASHA_SCORE_LOSS = 0.005


@dataclass(frozen=True)
class Outcome:
    """One end-to-end run of `tune`."""

    way: str
    seed: int
    selection: float  # the registered model's recorded selection score
    test_acc: float
    test_low: float  # its 95% interval
    test_high: float
    test_loss: float
    best: float  # the sweep's best score
    epochs: int  # trained by all trials together
    seconds: float

    @property
    def gap(self) -> float:
        return self.selection - self.test_acc


def run_once(way: str, seed: int, keep: bool) -> Outcome:
    """`tune` in a fresh folder for this way and seed; the figures come from its store."""
    # MLflow loads only here, in the benchmark's own process.
    from pipeline import tags
    from pipeline.tracking.registry import version_of_sweep
    from pipeline.tracking.store import open_client
    from pipeline.tracking.sweeps import sweep_trials

    folder = Path(tempfile.mkdtemp(prefix=f"bench-quality-{way}-{seed}-"))
    try:
        sets = [arg for o in [f"seed={seed}", *WAYS[way]] for arg in ("--set", o)]
        command = [sys.executable, "-m", "pipeline", "tune", "--space", str(DEFAULT_SPACE), *sets]
        output, seconds = run_timed(command, folder, user_env(folder))
        parent = re.search(r"parent run: ([0-9a-f]+)", output)
        if parent is None:
            sys.exit(f"no sweep summary in the output of tune:\n{output[-4000:]}")
        client = open_client(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        model = "digits-mlp"  # default.yaml's registered_model
        version = version_of_sweep(client, model, parent[1])
        if version is None:
            sys.exit(f"tune registered no {model} version for its sweep:\n{output[-4000:]}")
        retrain_run = str(client.get_model_version(model, version).run_id)
        retrain = client.get_run(retrain_run).data.metrics
        trials = sweep_trials(client, parent[1])
        outcome = Outcome(
            way,
            seed,
            # Before second opinions, the trial's own score in the sweep was the selection score.
            retrain.get("selection_val_acc", retrain["trial_val_acc"]),
            retrain["test_acc"],
            retrain.get("test_acc_low", float("nan")),
            retrain.get("test_acc_high", float("nan")),
            retrain["test_loss"],
            # The sweep's top trial's score, as its parent run records it.
            float(client.get_run(parent[1]).data.params[f"{tags.SWEEP_BEST}val_acc"]),
            sum(t.epochs_trained for t in trials),
            seconds,
        )
    finally:
        if keep:
            print(f"  kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"  {line(outcome)}", flush=True)
    return outcome


@dataclass(frozen=True)
class RegressionOutcome:
    """One end-to-end run of `tune` on the regression space, and the baselines on its split."""

    seed: int
    selection: float  # the registered model's selection score (val_rmse on fresh folds)
    test_rmse: float
    test_low: float
    test_high: float
    ridge: float  # RidgeCV's test RMSE on the same split
    boosting: float  # HistGradientBoostingRegressor's
    seconds: float


def run_regression(seed: int, keep: bool) -> RegressionOutcome:
    """`tune` on the regression space in a fresh folder, then the baselines on its split."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV

    from pipeline.config import load_experiment
    from pipeline.core.sources import experiment_split
    from pipeline.tracking.registry import version_of_sweep
    from pipeline.tracking.store import open_client

    folder = Path(tempfile.mkdtemp(prefix=f"bench-quality-regression-{seed}-"))
    try:
        command = [sys.executable, "-m", "pipeline", "tune", "--space", str(REGRESSION_SPACE)]
        command += ["--set", f"seed={seed}"]
        output, seconds = run_timed(command, folder, user_env(folder))
        parent = re.search(r"parent run: ([0-9a-f]+)", output)
        if parent is None:
            sys.exit(f"no sweep summary in the output of tune:\n{output[-4000:]}")
        experiment = load_experiment(REGRESSION_SPACE, [f"seed={seed}"])
        client = open_client(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        version = version_of_sweep(client, experiment.model_name, parent[1])
        if version is None:
            sys.exit(f"tune registered no version for its sweep:\n{output[-4000:]}")
        retrain_run = str(client.get_model_version(experiment.model_name, version).run_id)
        retrain = client.get_run(retrain_run).data.metrics
    finally:
        if keep:
            print(f"  kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    dataset, split = experiment_split(experiment, folder)
    assert dataset.features is not None
    train, test = split.tuning_rows, split.test
    baselines = []
    for model in (
        RidgeCV(alphas=np.logspace(-3, 3, 13)),
        HistGradientBoostingRegressor(random_state=seed),
    ):
        model.fit(dataset.features[train], dataset.labels[train])
        predicted = model.predict(dataset.features[test])
        baselines.append(float(np.sqrt(np.mean((predicted - dataset.labels[test]) ** 2))))
    outcome = RegressionOutcome(
        seed,
        retrain["selection_val_rmse"],
        retrain["test_rmse"],
        retrain["test_rmse_low"],
        retrain["test_rmse_high"],
        baselines[0],
        baselines[1],
        seconds,
    )
    print(f"  {regression_line(outcome)}", flush=True)
    return outcome


def regression_line(o: RegressionOutcome) -> str:
    return (
        f"regression seed {o.seed}  selection {o.selection:.2f}  test_rmse {o.test_rmse:.2f} "
        f"[{o.test_low:.2f}, {o.test_high:.2f}]  gap {o.selection - o.test_rmse:+.2f}  RidgeCV "
        f"{o.ridge:.2f}  gradient boosting {o.boosting:.2f}  {o.seconds:6.1f} s"
    )


def report_regression(outcomes: list[RegressionOutcome]) -> list[bool]:
    """The regression rows and their bars (means over seeds)."""
    if not outcomes:
        return []
    print("\nregression (diabetes): test RMSE, lower is better")
    for o in outcomes:
        print(f"  {regression_line(o)}")
    ours = statistics.mean(o.test_rmse for o in outcomes)
    ridge = statistics.mean(o.ridge for o in outcomes)
    boosting = statistics.mean(o.boosting for o in outcomes)
    gap = statistics.mean(o.selection - o.test_rmse for o in outcomes)
    beats = ours / ridge < GOAL_RIDGE_RATIO
    close = ours / boosting <= GOAL_BOOSTING_RATIO
    print(f"  mean test RMSE: ours {ours:.2f}, RidgeCV {ridge:.2f}, gradient boosting "
          f"{boosting:.2f}; mean selection - test {gap:+.2f}")  # fmt: skip
    print(f"  ours / RidgeCV {ours / ridge:.3f} (goal < {GOAL_RIDGE_RATIO})  {passed(beats)}")
    print(f"  ours / gradient boosting {ours / boosting:.3f} (goal <= {GOAL_BOOSTING_RATIO})  "
          f"{passed(close)}")  # fmt: skip
    return [beats, close]


def line(o: Outcome) -> str:
    return (
        f"{o.way:6} seed {o.seed}  selection {o.selection:.4f}  test_acc {o.test_acc:.4f} "
        f"[{o.test_low:.4f}, {o.test_high:.4f}]  test_loss {o.test_loss:.4f}  gap "
        f"{100 * o.gap:+5.2f} pt  best {o.best:.4f}  epochs {o.epochs:5d}  {o.seconds:6.1f} s"
    )


def report(outcomes: list[Outcome]) -> bool:
    """The table and the bars; True when every judged bar holds."""
    print("\nway    seed  selection  test_acc  [95% interval]     test_loss  gap      best    "
          "epochs  seconds")  # fmt: skip
    for o in outcomes:
        print(
            f"{o.way:6} {o.seed:4}  {o.selection:9.4f}  {o.test_acc:8.4f}  [{o.test_low:.4f}, "
            f"{o.test_high:.4f}]  {o.test_loss:9.4f}  {100 * o.gap:+5.2f}pt  {o.best:.4f}  "
            f"{o.epochs:6d}  {o.seconds:7.1f}"
        )
    by_way: dict[str, dict[int, Outcome]] = {}
    for o in outcomes:
        by_way.setdefault(o.way, {})[o.seed] = o
    verdicts: list[bool] = []
    print("\nbars")
    tpe = by_way.get("tpe", {})
    if tpe:
        tests = [o.test_acc for o in tpe.values()]
        ok = statistics.mean(tests) >= GOAL_MEAN_TEST_ACC and min(tests) >= GOAL_MIN_TEST_ACC
        verdicts.append(ok)
        print(f"  test_acc mean {statistics.mean(tests):.4f} (goal >= {GOAL_MEAN_TEST_ACC}), "
              f"lowest {min(tests):.4f} (goal >= {GOAL_MIN_TEST_ACC})  {passed(ok)}")  # fmt: skip
        worst = max(abs(o.gap) for o in tpe.values())
        verdicts.append(worst <= GOAL_GAP)
        print(f"  largest |selection - test| {100 * worst:.2f} pt (goal <= "
              f"{100 * GOAL_GAP:.0f})  {passed(worst <= GOAL_GAP)}")  # fmt: skip
        slowest = max(o.seconds for o in tpe.values())
        verdicts.append(slowest <= GOAL_SECONDS)
        print(f"  slowest default tune {slowest:.0f} s (goal <= {GOAL_SECONDS:.0f})  "
              f"{passed(slowest <= GOAL_SECONDS)}")  # fmt: skip
    single = by_way.get("single", {})
    if single:
        inside = sum(o.test_low <= o.selection <= o.test_high for o in single.values())
        gap = statistics.mean(o.gap for o in single.values())
        ok = inside == len(single) and abs(gap) <= GOAL_GAP
        verdicts.append(ok)
        print(f"  one split: selection inside the test interval in {inside} of {len(single)} "
              f"seeds, mean gap {100 * gap:+.2f} pt (goal within {100 * GOAL_GAP:.0f})  "
              f"{passed(ok)}")  # fmt: skip
    random = by_way.get("random", {})
    seeds = sorted(set(tpe) & set(random))
    if seeds:
        wins = sum(tpe[s].best >= random[s].best for s in seeds)
        needed = len(seeds) // 2 + 1
        verdicts.append(wins >= needed)
        print(f"  TPE's best >= random's in {wins} of {len(seeds)} seeds (goal >= {needed})  "
              f"{passed(wins >= needed)}")  # fmt: skip
    fifo = by_way.get("fifo", {})
    seeds = sorted(set(tpe) & set(fifo))
    if seeds:
        share = sum(tpe[s].epochs for s in seeds) / sum(fifo[s].epochs for s in seeds)
        loss = statistics.mean(fifo[s].best for s in seeds) - statistics.mean(
            tpe[s].best for s in seeds
        )
        ok = share <= GOAL_ASHA_EPOCH_SHARE and loss <= GOAL_ASHA_SCORE_LOSS
        verdicts.append(ok)
        print(f"  ASHA trains {share:.0%} of FIFO's epochs (goal <= "
              f"{GOAL_ASHA_EPOCH_SHARE:.0%}), best {100 * loss:+.2f} pt below FIFO's (goal <= "
              f"{100 * GOAL_ASHA_SCORE_LOSS:.1f})  {passed(ok)}")  # fmt: skip
    return all(verdicts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (0 1 2)")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS),
                        help="which ways to run (all)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep each run's folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from pipeline.cli import environment

    environment.configure(Console(stderr=True), debug=False)  # MLflow as quiet as in the CLI
    outcomes, regressions = [], []
    for way in args.ways:
        for seed in args.seeds:
            print(f"running {way}, seed {seed} ...", flush=True)
            if way == "regression":
                regressions.append(run_regression(seed, args.keep))
            else:
                outcomes.append(run_once(way, seed, args.keep))
    ok = report(outcomes) if outcomes else True
    ok = all([ok, *report_regression(regressions)])
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
