"""Ray Tune: the HyperOpt search space and searcher, the scheduler, the Tuner, and the trial
events and results a sweep hands to tracking (as plain values)."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import pandas as pd
from hyperopt import hp
from hyperopt.base import JOB_STATE_DONE
from hyperopt.fmin import generate_trial
from hyperopt.pyll import scope
from ray import tune
from ray.tune import ResultGrid
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.hyperopt import HyperOptSearch

from pipeline.config import (
    HYPERPARAMETERS,
    ChoiceParam,
    ConditionalOption,
    Experiment,
    FloatParam,
    IntParam,
    ParamSpec,
    Scalar,
    SpaceNode,
    active_params,
    flatten_sample,
    option_name,
    walk,
)
from pipeline.core.data import TuningData
from pipeline.core.decisions import best_epoch, planned_epochs, trial_state
from pipeline.distributed.trainable import TrialSettings, run_trial
from pipeline.errors import PipelineError, Terminated
from pipeline.storage import for_ray

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
        self, *args: Any, evaluated: list[tuple[dict[str, Any], float]] | None = None, **kwargs: Any
    ) -> None:
        self._evaluated = evaluated or []  # read by _setup_hyperopt, which __init__ calls
        super().__init__(*args, **kwargs)

    def _setup_hyperopt(self) -> None:
        super()._setup_hyperopt()
        assert self.domain is not None
        trials = self._hpopt_trials
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


def make_scheduler(experiment: Experiment) -> TrialScheduler:
    """ASHA on the epoch (max_t = budget.max_epochs), or FIFO, which lets every trial finish."""
    if experiment.scheduler.name == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    return AsyncHyperBandScheduler(
        time_attr="epoch",
        max_t=experiment.budget.max_epochs,
        grace_period=experiment.scheduler.grace_period,
        reduction_factor=experiment.scheduler.reduction_factor,
        brackets=1,
    )


def make_trainable(experiment: Experiment, data: TuningData) -> Any:
    """`run_trial` with the data put in the object store once and the trial's resources."""
    settings = TrialSettings(
        family=experiment.model.family,
        max_epochs=experiment.budget.max_epochs,
        seed=experiment.seed,
        cpus=experiment.resources.cpus,
        checkpoint_seconds=experiment.budget.checkpoint_seconds,
        metric=experiment.metric,
        mode=experiment.mode,
    )
    trainable = tune.with_parameters(run_trial, data=data, settings=settings)
    return tune.with_resources(
        trainable, {"cpu": experiment.resources.cpus, "gpu": experiment.resources.gpus}
    )


def make_tuner(
    experiment: Experiment,
    data: TuningData,
    storage: str,
    run_name: str,
    sink: TrialSink,
    warm: WarmStart | None = None,
    endpoint: str | None = None,
) -> tune.Tuner:
    """The Tuner for one sweep; trial state lands in `storage`/`run_name` (s3:// through
    `endpoint`, if given), trial events go to `sink`, and the search starts from `warm`."""
    storage_path, filesystem = for_ray(storage, endpoint)
    return tune.Tuner(
        make_trainable(experiment, data),
        tune_config=tune.TuneConfig(
            metric=experiment.metric,
            mode=experiment.mode,
            search_alg=make_searcher(experiment, warm),
            scheduler=make_scheduler(experiment),
            num_samples=experiment.budget.num_samples,
            max_concurrent_trials=experiment.budget.max_concurrent,
            # A reused actor skips process start-up and `import torch` for every trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            # Ray's result.json (the trial table and a resume read it); no CSV or TensorBoard
            # logs, which nothing reads (see TUNE_SETTINGS).
            callbacks=[
                TrialEvents(sink, experiment.budget.max_epochs),
                JsonLoggerCallback(),  # type: ignore[no-untyped-call]
            ],
            # Two, not one: Tune deletes the older checkpoint before its state snapshot names
            # the newer, so a driver killed in between left a state naming a deleted one, and
            # that trial could not be resumed.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=experiment.budget.max_failures),
            verbose=0,
        ),
    )


def can_resume(sweep_path: str, endpoint: str | None = None) -> bool:
    """Whether Ray saved enough of a sweep at `sweep_path` to resume it."""
    path, filesystem = for_ray(sweep_path, endpoint)
    return bool(tune.Tuner.can_restore(path, storage_filesystem=filesystem))


def restore_tuner(
    experiment: Experiment,
    data: TuningData,
    sweep_path: str,
    endpoint: str | None = None,
    restart_errored: bool = False,
) -> tune.Tuner:
    """Resume an interrupted sweep: finished trials stay, the others continue from checkpoints
    (errored ones from their first epoch, with `restart_errored`)."""
    if not can_resume(sweep_path, endpoint):
        raise PipelineError(f"{sweep_path}: no sweep state to resume from")
    path, filesystem = for_ray(sweep_path, endpoint)
    return tune.Tuner.restore(
        path,
        make_trainable(experiment, data),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
        storage_filesystem=filesystem,
    )


class TrialSink(Protocol):
    """Where a sweep's trial events go: the MLflow trial recorder, a progress display."""

    def start(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None: ...

    def result(self, trial_id: str, result: dict[str, Any]) -> None: ...

    def end(self, trial_id: str, state: str, error: str | None) -> None: ...

    def close(self) -> None: ...


class SweepWatcher(TrialSink, Protocol):
    """A sink that watches one run of `fit` (a progress display), told the budget first."""

    def begin(self, total: int, metric: str, mode: str) -> None: ...


# The watchers of the sweep `fit` runs now. They are not part of the callback Ray pickles with
# the sweep's state, so a resumed sweep is watched too.
watchers: list[TrialSink] = []


class TrialEvents(tune.Callback):
    """Hands Tune's trial events to a sink (and the watchers) as plain values: the sampled
    hyperparameters (flat), each epoch's result, the state a trial ended in and its error."""

    def __init__(self, sink: TrialSink, max_epochs: int) -> None:
        self.sink = sink
        self.max_epochs = max_epochs

    def _sinks(self) -> list[TrialSink]:
        return [self.sink, *watchers]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # The searcher numbers its suggestions from 1 (warm-start points first) in the tag.
        number = int(str(trial.experiment_tag).split("_", 1)[0] or 0)
        params = flatten_sample(trial.config)
        for sink in self._sinks():
            sink.start(trial.trial_id, number, params)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        for sink in self._sinks():
            sink.result(trial.trial_id, result)

    def _end(self, trial: Any, error: str | None) -> None:
        last = trial.last_result or {}
        state = trial_state(last, planned_epochs(trial.config, self.max_epochs), error is not None)
        for sink in self._sinks():
            sink.end(trial.trial_id, state, error)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, error_line(trial.error_file))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.sink.close()


def error_line(error_file: str | None) -> str:
    """The last line of a failed trial's traceback (the exception), as Ray saved it."""
    lines: list[str] = []
    if error_file:
        try:
            lines = Path(error_file).read_text(errors="replace").strip().splitlines()
        except OSError as exc:  # a full disk may not have kept it
            return f"(its traceback could not be read: {exc})"
    return lines[-1].strip() if lines else "(no traceback saved)"


@dataclass(frozen=True)
class TunerResults:
    """What a finished (or interrupted) `Tuner.fit` leaves, as plain values."""

    table: pd.DataFrame  # one row per trial, see `trial_table`
    param_names: list[str]  # every hyperparameter some trial sampled
    ended: int  # trials that terminated or errored
    terminated: bool  # SIGTERM stopped it (as Ctrl-C does)
    histories: dict[str, list[dict[str, float]]]  # trial id -> each epoch's reported metrics
    lost_checkpoints: int = 0  # trials that errored because their checkpoint was gone


# Ray's error when a resumed sweep's saved state names a checkpoint that Ray had already deleted
# (num_to_keep): a driver killed between that deletion and the next snapshot of its state.
LOST_CHECKPOINT = "Could not recover from checkpoint as it does not exist on storage anymore"


# Tune settings that exist only as environment variables, read as `Tuner.fit` starts; a user's
# own values win.
TUNE_SETTINGS = {
    # Ray's CSV and TensorBoard loggers cost the driver a write per result; nothing reads them.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # A trial runs epochs for up to 0.2 s per call from the driver, and hands their results over
    # together, instead of waiting for the driver after every epoch (a round trip that took
    # longer than a digits epoch). Short epochs so cost a scheduler's decision at most 0.2 s of
    # training; an epoch longer than that still goes one per call.
    "TUNE_RESULT_BUFFER_LENGTH": "1000",
    "TUNE_RESULT_BUFFER_MIN_TIME_S": "0.2",
}


@contextmanager
def tune_settings() -> Iterator[None]:
    """`TUNE_SETTINGS` in the environment while the block runs (those the user set stay)."""
    added = {k: v for k, v in TUNE_SETTINGS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def fit(
    tuner: tune.Tuner, experiment: Experiment, watcher: SweepWatcher | None = None
) -> TunerResults:
    """Run the sweep to its end, or until Ctrl-C or SIGTERM stops it gracefully (trials stopped,
    Tune's state saved for a resume), and tabulate its trials; `watcher` sees the trial events
    (and is closed at the end)."""
    terminated = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        # Tune stops gracefully on SIGUSR1 (its handler, once `fit` has installed it).
        graceful = signal.getsignal(signal.SIGUSR1)
        if not callable(graceful):
            raise Terminated()
        graceful(signum, frame)

    if watcher is not None:
        watcher.begin(experiment.budget.num_samples, experiment.metric, experiment.mode)
        watchers.append(watcher)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # not an earlier sweep's handler
    try:
        with tune_settings():
            grid = tuner.fit()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if watcher is not None:
            watchers.remove(watcher)
            watcher.close()
    configs = [grid[i].config or {} for i in range(len(grid))]
    names = {name for config in configs for name in flatten_sample(config)}
    histories = epoch_histories(grid)
    table = trial_table(grid, experiment, histories)
    return TunerResults(
        table,
        [c for c in table.columns if c in names],
        grid.num_terminated + grid.num_errors,
        terminated,
        histories,
        sum(LOST_CHECKPOINT in str(grid[i].error) for i in range(len(grid)) if grid[i].error),
    )


def trial_id_of(result: Any) -> str:
    """The trial id of one of a ResultGrid's results (from its folder before any result)."""
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def epoch_histories(grid: ResultGrid) -> dict[str, list[dict[str, float]]]:
    """Each trial's reported epochs as Ray recorded them: epoch, when (seconds since the epoch),
    losses and accuracy."""
    histories: dict[str, list[dict[str, float]]] = {}
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        trial_id = trial_id_of(result)
        columns = ["epoch", "timestamp", "train_loss", "val_loss", "val_acc"]
        if history is None or not set(columns) <= set(history.columns):
            histories[trial_id] = []
            continue
        histories[trial_id] = [
            {name: float(row[name]) for name in columns}
            for row in history[columns].dropna().to_dict("records")
        ]
    return histories


def trial_table(
    grid: ResultGrid, experiment: Experiment, histories: dict[str, list[dict[str, float]]]
) -> pd.DataFrame:
    """One row per trial: id, state, hyperparameters, best epoch (of its `histories`, see
    `epoch_histories`) and its metrics, where it ran."""
    rows = []
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        last = result.metrics or {}
        trial_id = trial_id_of(result)
        params = flatten_sample(result.config or {})
        state = trial_state(
            last,
            planned_epochs(result.config or {}, experiment.budget.max_epochs),
            result.error is not None,
        )
        row: dict[str, Any] = {"trial_id": trial_id, "state": state, **params}
        best = best_epoch(histories.get(trial_id, []), experiment.metric, experiment.mode)
        if best is not None and state != "diverged":
            row.update(
                epoch=int(best["epoch"]),
                val_acc=float(best["val_acc"]),
                val_loss=float(best["val_loss"]),
                train_loss=float(best["train_loss"]),
            )
        row["epochs_trained"] = int(last.get("epoch", 0))
        row["train_seconds"] = (
            float(history["train_seconds"].sum())
            if history is not None and "train_seconds" in history
            else 0.0
        )
        row["host"] = last.get("hostname")
        row["device"] = last.get("device")
        rows.append(row)
    table = pd.DataFrame(rows)
    # Integers stay integers (in trials.csv and the best trial's params) where some trials
    # lack the parameter (a conditional option not chosen), which would make the column float.
    for name in table.columns.intersection(list(HYPERPARAMETERS)):
        if HYPERPARAMETERS[name].kind is int:
            table[name] = table[name].astype("Int64")
    return table
