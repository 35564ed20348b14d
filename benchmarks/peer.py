"""Benchmark: our `tune` against a plain Optuna script on the same job, each in a fresh process.

The job (`job_overrides`): search_spaces/default.yaml's MLP space (lr log-uniform 1e-4..0.5, 1-3
hidden layers of 32/64/128/256 units, activation, dropout 0..0.5, weight decay log-uniform
1e-7..1e-2, optimizer gd/sgd/momentum/adam/adamw/rmsprop with its batch size and momentum) on
scikit-learn's bundled digits (1,797 rows, 64 features, 10 classes), with its seeded, stratified
train / validation / test split (1,257 / 270 / 270 rows) and no cross-validation
(`data.cv_folds` unset); 32 trials, TPE with 8 random start-up trials, early stopping with grace
period 1 and reduction factor 3, at most 30 epochs, 2 trials at a time of 1 CPU each, metric
val_acc (max). The network and the training loop are ours in every way (`pipeline.core.train.fit`:
the same data, split, model and seed), so only the orchestration differs:

(a) Optuna in-process: a plain script (`run_optuna`), its whole process timed: its imports and
    data, then TPESampler(n_startup_trials=8, seed), HyperbandPruner(min_resource=1,
    max_resource=30, reduction_factor=3), `study.optimize(..., n_trials=32, n_jobs=2)` (two
    threads, torch at one intra-op thread each), `trial.report` every epoch and
    `trial.should_prune()` after it; then its best trial retrained on train + validation for its
    best epoch count and tested once on the test rows. Its sweep seconds are those of `optimize`.
(b) `python -m pipeline tune`: Ray Tune, HyperOpt TPE, ASHA, every trial tracked in MLflow
    (SQLite); then the best few trials given a second opinion, the best of them retrained on
    train + validation, tested once and registered, and the sweep's report drawn. Its sweep
    seconds are the `sweep` phase of the timings line it ends with: `Tuner.fit`, from the first
    trial's start (its worker's start-up included) to the last trial's end, as `optimize` is
    Optuna's; starting Ray and the sweep's runs come before it (in the whole seconds).

The two run as pairs, interleaved (ours, Optuna, ours, Optuna, ...), REPEAT times (default 5),
every run a fresh process, so that a slow spell of the machine falls on both alike. Ours runs in
a fresh temporary folder (its own mlruns/ store, PIPELINE_STORAGE there), with the environment a
user gets (RAY_ADDRESS and MLFLOW_TRACKING_URI unset: the CLI starts a local Ray). A run's whole
seconds are its process's, start to exit. Besides the seconds, each run's work: the epochs its
trials trained, and its throughput (epochs per second of sweep), so that a verdict does not hang
on which configurations a run happened to draw (pruned early, or trained to the end). The best
val_acc follows our rule for both: the best trial, completed or stopped early, at its best epoch
of the smoothed score (`decisions.best_epoch`: the mean of the five epochs centred on it), which
is `sweep_best.val_acc` of our parent run and, for Optuna, the best such score of any trial, pruned
ones included. Optuna's TPE learns that score from the trials that complete, as ours learns it
from every trial; a pruned trial is known to it by the raw val_acc it last reported (Optuna's
own rule). Printed: each figure's median and spread (lowest..highest), the ratios of the
medians, the median seconds of each phase of our command (from the timings line `tune` ends
with, plus what it cannot see: start-up and exit), and the bars: our median sweep <= 1.0x
Optuna's, our median whole command <= 1.3x Optuna's whole process, our median test_acc not
below Optuna's, our median throughput at least Optuna's.

    .venv/bin/pip install -e '.[bench]'     # Optuna, which the pipeline itself does not need
    .venv/bin/python benchmarks/peer.py [--repeat N] [--trials N] [--concurrent N] [--keep]
        [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common import ROOT, passed, positive, run_timed, user_env

# Only what the Optuna side needs is imported at its start (in `run_optuna`), and nothing of
# Ray or MLflow: this file is also that side's script, whose start-up is timed.
if TYPE_CHECKING:
    import optuna

    from pipeline.config import ParamSpec, Scalar

DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
DEFAULT_TRIALS = 32
DEFAULT_CONCURRENT = 2
DEFAULT_REPEAT = 5
STARTUP_TRIALS = 8  # random trials before TPE models the results, in both searchers
MAX_EPOCHS = 30
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
GOAL_SWEEP_RATIO = 1.0  # our median sweep seconds over Optuna's
GOAL_WHOLE_RATIO = 1.3  # our median whole command over Optuna's whole process
OPTUNA_FLAG = "--run-optuna"  # internal: run the Optuna side in this process, print JSON

# `tune`'s last line: the seconds of each of its phases, e.g. "timings: imports 6.9 s, ...".
TIMINGS = re.compile(r"([a-z][a-z ]*) (\d+\.\d) s")


@dataclass
class Runs:
    """What one way measured, one entry per run."""

    sweep: list[float] = field(default_factory=list)  # seconds of the sweep alone
    whole: list[float] = field(default_factory=list)  # seconds of the whole process
    epochs: list[float] = field(default_factory=list)  # epochs its trials trained
    throughput: list[float] = field(default_factory=list)  # epochs per second of sweep
    best: list[float] = field(default_factory=list)  # best smoothed val_acc of the sweep
    test_acc: list[float] = field(default_factory=list)  # its retrained winner's, tested once
    phases: dict[str, list[float]] = field(default_factory=dict)  # our command's timings line

    def add(self, *, sweep: float, whole: float, epochs: int, best: float, test_acc: float) -> None:
        self.sweep.append(sweep)
        self.whole.append(whole)
        self.epochs.append(epochs)
        self.throughput.append(epochs / sweep)
        self.best.append(best)
        self.test_acc.append(test_acc)

    def median(self, figure: str) -> float:
        """The median of one figure over the runs."""
        values: list[float] = getattr(self, figure)
        return statistics.median(values)

    def spread(self, figure: str, digits: int) -> str:
        """One figure's median and its lowest and highest values, as printed."""
        values: list[float] = getattr(self, figure)
        return (
            f"{self.median(figure):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"
        )


def job_overrides(trials: int, concurrent: int) -> list[str]:
    """The job, as `--set` overrides of search_spaces/default.yaml (which cross-validates)."""
    return [
        "data.cv_folds=null",
        f"budget.num_samples={trials}",
        f"budget.max_concurrent={concurrent}",
        f"budget.max_epochs={MAX_EPOCHS}",
        "search.algorithm=tpe",
        # TPE needs one trial after its random ones.
        f"search.n_initial_points={max(1, min(STARTUP_TRIALS, trials - 1))}",
        "scheduler.name=asha",
        f"scheduler.grace_period={GRACE_PERIOD}",
        f"scheduler.reduction_factor={REDUCTION_FACTOR}",
        "resources.cpus=1",
        "resources.gpus=0",
    ]


# --- (a) Optuna -------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, params: dict[str, ParamSpec]) -> dict[str, Scalar]:
    """Sample our space with Optuna: the flat parameters `Hyperparameters.from_params` takes, a
    chosen option's own parameters included (Optuna, like TPE in hyperopt, leaves the others
    out)."""
    from pipeline.config import ChoiceParam, ConditionalOption, FloatParam, IntParam, option_name

    flat: dict[str, Scalar] = {}
    for name, spec in params.items():
        if isinstance(spec, FloatParam):
            flat[name] = trial.suggest_float(
                name, spec.low, spec.high, log=spec.log, step=spec.step
            )
        elif isinstance(spec, IntParam):
            flat[name] = trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, ChoiceParam):
            options = {option_name(option): option for option in spec.values}
            chosen = trial.suggest_categorical(name, list(options))
            assert chosen is not None  # one of our options, none of which is null
            flat[name] = chosen
            option = options[chosen]
            if isinstance(option, ConditionalOption):
                flat.update(suggest(trial, option.params))
        else:
            flat[name] = spec
    return flat


def run_optuna(trials: int, concurrent: int) -> None:
    """The Optuna side: the job with our data, network and training loop, then its best trial
    retrained on train + validation and tested once, as a hand-rolled script does; prints one
    JSON line with the seconds of `optimize`, the epochs trained, the best val_acc, the test
    accuracy and the trial states."""
    import optuna
    import torch

    from pipeline.config import Hyperparameters, load_experiment
    from pipeline.config.door import import_callable
    from pipeline.core.data import split_dataset, tuning_data
    from pipeline.core.decisions import best_epoch
    from pipeline.core.sources import load_dataset
    from pipeline.core.train import EpochMetrics, fit, fit_final

    experiment = load_experiment(DEFAULT_SPACE, job_overrides(trials, concurrent))
    # digits is bundled with scikit-learn: nothing is downloaded or cached.
    dataset = load_dataset(
        experiment.data, experiment.seed, Path(tempfile.gettempdir()), task=experiment.task
    )
    split = split_dataset(dataset, experiment.data, experiment.seed)
    data = tuning_data(dataset, split, shared_scale=experiment.data.shared_scale)
    builder = import_callable(experiment.model.builder_reference, (), "model.builder")
    torch.set_num_threads(1)  # each trial one CPU, as our trials get (resources.cpus=1)
    device = torch.device("cpu")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    # Per trial: its best smoothed val_acc and that epoch (pruned trials included), its
    # hyperparameters, and the epochs it trained.
    scores: dict[int, tuple[float, int]] = {}
    sampled: dict[int, dict[str, Scalar]] = {}
    trained: dict[int, int] = {}

    def objective(trial: optuna.Trial) -> float:
        sampled[trial.number] = suggest(trial, experiment.params)
        hp = Hyperparameters.from_params(sampled[trial.number])
        history: list[dict[str, float]] = []

        def report(metrics: EpochMetrics, state: object) -> None:
            trial.report(metrics.scores["val_acc"], metrics.epoch)
            history.append(metrics.as_dict())
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            fit(builder, hp, data, max_epochs=experiment.budget.max_epochs, report=report,
                device=device, seed=experiment.seed)  # fmt: skip
        finally:
            best = best_epoch(history, "val_acc", "max")
            scores[trial.number] = (best["val_acc"], int(best["epoch"])) if best else (0.0, 1)
            trained[trial.number] = len(history)
        # The trial's best smoothed score, as our TPE learns it; a pruned trial
        # never gets here.
        return scores[trial.number][0]

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            n_startup_trials=experiment.n_initial_points, seed=experiment.seed
        ),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=experiment.scheduler.grace_period,
            max_resource=experiment.budget.max_epochs,
            reduction_factor=int(experiment.scheduler.reduction_factor),
        ),
    )
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=concurrent)
    seconds = time.perf_counter() - started
    # The winner retrained on train + validation for its best epoch count, tested once.
    winner = max(scores, key=lambda number: scores[number][0])
    network, _ = fit_final(
        builder,
        Hyperparameters.from_params(sampled[winner]),
        dataset,
        train_rows=split.tuning_rows,
        epochs=scores[winner][1],
        device=device,
        seed=experiment.seed,
        shared_scale=experiment.data.shared_scale,
    )
    with torch.no_grad():
        outputs = network(torch.from_numpy(dataset.rows(split.test)))
    test_acc = float((outputs.argmax(1).numpy() == dataset.labels[split.test]).mean())
    states = [t.state.name.lower() for t in study.trials]
    print(
        json.dumps(
            {
                "sweep_seconds": seconds,
                "epochs": sum(trained.values()),
                "best_val_acc": scores[winner][0],
                "test_acc": test_acc,
                "states": {s: states.count(s) for s in sorted(set(states))},
            }
        )
    )


def time_optuna(trials: int, concurrent: int, runs: Runs) -> None:
    """One run of the Optuna side in a fresh process."""
    out, seconds = run_timed(
        [sys.executable, __file__, OPTUNA_FLAG, "--trials", str(trials),
         "--concurrent", str(concurrent)],
        ROOT, dict(os.environ),
    )  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    runs.add(sweep=result["sweep_seconds"], whole=seconds, epochs=result["epochs"],
             best=result["best_val_acc"], test_acc=result["test_acc"])  # fmt: skip
    print(f"  optuna: sweep {result['sweep_seconds']:.1f} s, whole {seconds:.1f} s, "
          f"{result['epochs']} epochs, best val_acc {result['best_val_acc']:.4f}, test_acc "
          f"{result['test_acc']:.4f}, trials {result['states']}", flush=True)  # fmt: skip


# --- (b) our CLI -------------------------------------------------------------------------


def timed_phases(output: str, seconds: float) -> dict[str, float]:
    """The phases of our command's timings line, and what the line cannot see: the seconds
    before its stopwatch started (the interpreter, the CLI's own imports) and after its last
    line (the exit)."""
    line = next((x for x in output.splitlines() if x.startswith("timings: ")), None)
    if line is None:
        sys.exit(f"no timings line in the output of tune:\n{output[-4000:]}")
    phases = {name: float(value) for name, value in TIMINGS.findall(line.removeprefix("timings: "))}
    total = phases.pop("total")
    return {**phases, "start-up and exit": seconds - total}


def time_ours(trials: int, concurrent: int, keep: bool, runs: Runs) -> None:
    """One run of `tune` in a fresh folder; the scores come from its store."""
    # MLflow loads only here, in the benchmark's own process, never in the Optuna side's.
    from pipeline import tags
    from pipeline.tracking.registry import logged_test_score, version_of_sweep
    from pipeline.tracking.store import open_client

    folder = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    try:
        sets = [arg for o in job_overrides(trials, concurrent) for arg in ("--set", o)]
        command = [sys.executable, "-m", "pipeline", "tune", "--space", str(DEFAULT_SPACE), *sets]
        output, seconds = run_timed(command, folder, user_env(folder))
        parent = re.search(r"parent run: ([0-9a-f]+)", output)
        epochs = re.search(r"(\d+) epochs trained", output)
        if parent is None or epochs is None:
            sys.exit(f"no sweep summary in the output of tune:\n{output[-4000:]}")
        client = open_client(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        # The sweep's top trial's smoothed score at its best epoch, as the sweep ranked it.
        best = float(client.get_run(parent[1]).data.params[f"{tags.SWEEP_BEST}val_acc"])
        model = "digits-mlp"  # default.yaml's registered_model
        version = version_of_sweep(client, model, parent[1])
        test_acc = logged_test_score(client, model, version, "acc") if version else None
        if test_acc is None:
            sys.exit(f"tune registered no {model} version for its sweep:\n{output[-4000:]}")
        phases = timed_phases(output, seconds)
        sweep = phases["sweep"]
        runs.add(sweep=sweep, whole=seconds, epochs=int(epochs[1]), best=best, test_acc=test_acc)
        for phase, spent in phases.items():
            runs.phases.setdefault(phase, []).append(spent)
        print(f"  tune: sweep {sweep:.1f} s, whole {seconds:.1f} s, {epochs[1]} epochs, best "
              f"val_acc {best:.4f}, test_acc {test_acc:.4f}", flush=True)  # fmt: skip
    finally:
        if keep:
            print(f"  kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


# --- report -----------------------------------------------------------------------------------

# What is printed of each way: figure, heading, decimals.
FIGURES = (
    ("sweep", "sweep s", 1),
    ("whole", "whole s", 1),
    ("epochs", "epochs", 0),
    ("throughput", "epochs/s", 2),
    ("best", "best val_acc", 4),
    ("test_acc", "test_acc", 4),
)


def report(results: dict[str, Runs], trials: int, concurrent: int) -> bool:
    """Print the medians and spreads, the ratios, our phases and the bars; True when every bar
    is met."""
    ours, peer = results["tune"], results["optuna"]
    print(f"\n{trials} trials, {concurrent} at a time, on {os.cpu_count()} CPUs; {len(ours.sweep)} "
          "interleaved pairs; median (lowest..highest)")  # fmt: skip
    for figure, heading, digits in FIGURES:
        cells = "  ".join(
            f"{way} {runs.spread(figure, digits):>24}" for way, runs in results.items()
        )
        print(f"  {heading:13} {cells}")
    for phase, spent in ours.phases.items():
        print(f"  tune phase {phase}: median {statistics.median(spent):.1f} s")
    sweep, whole = (
        ours.median("sweep") / peer.median("sweep"),
        ours.median("whole") / peer.median("whole"),
    )
    test, peer_test = ours.median("test_acc"), peer.median("test_acc")
    rate, peer_rate = ours.median("throughput"), peer.median("throughput")
    checks = [
        (f"sweep {sweep:.2f}x Optuna's <= {GOAL_SWEEP_RATIO}x", sweep <= GOAL_SWEEP_RATIO),
        (f"whole command {whole:.2f}x Optuna's whole process <= {GOAL_WHOLE_RATIO}x",
         whole <= GOAL_WHOLE_RATIO),
        # Accuracies on the same rows: equal ones may differ in their last bits (float32).
        (f"test_acc {test:.4f} >= Optuna's {peer_test:.4f}", test >= peer_test - 1e-6),
        (f"throughput {rate:.2f} >= Optuna's {peer_rate:.2f} epochs/s", rate >= peer_rate),
    ]  # fmt: skip
    print("bars (medians):")
    for text, ok in checks:
        print(f"  {text:60} {passed(ok)}")
    return all(ok for _, ok in checks)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repeat", type=positive, default=DEFAULT_REPEAT,
        help=f"interleaved pairs of runs; medians are reported (default {DEFAULT_REPEAT})",
    )  # fmt: skip
    parser.add_argument(
        "--trials", type=positive, default=DEFAULT_TRIALS,
        help=f"trials per sweep (default {DEFAULT_TRIALS})",
    )  # fmt: skip
    parser.add_argument(
        "--concurrent", type=positive, default=DEFAULT_CONCURRENT,
        help=f"trials at once (default {DEFAULT_CONCURRENT})",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep our runs' temporary folders")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar is missed")
    parser.add_argument(OPTUNA_FLAG, action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_optuna:
        run_optuna(args.trials, args.concurrent)
        return 0
    if importlib.util.find_spec("optuna") is None:
        sys.exit("Optuna is missing: .venv/bin/pip install -e '.[bench]'")
    results = {way: Runs() for way in ("tune", "optuna")}
    for repeat in range(args.repeat):
        # The 1-minute load average tells whether something else competed for the CPUs.
        load = os.getloadavg()[0]
        print(f"pair {repeat + 1} of {args.repeat} (load average {load:.1f}) ...", flush=True)
        # Interleaved, so that a slow spell of the machine falls on both alike.
        time_ours(args.trials, args.concurrent, args.keep, results["tune"])
        time_optuna(args.trials, args.concurrent, results["optuna"])
    met = report(results, args.trials, args.concurrent)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
