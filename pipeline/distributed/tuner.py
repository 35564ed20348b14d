"""The Tuner of a sweep: the scheduler, the trial with its data and resources, trial events
handed on as plain values, a new or resumed run of the sweep and its graceful stop."""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import pyarrow.fs as pafs
import ray.cloudpickle
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from pipeline.config import Experiment, Scalar, flatten_sample
from pipeline.core.data import TuningData
from pipeline.core.decisions import planned_epochs, trial_state
from pipeline.distributed.results import (
    LOST_CHECKPOINT,
    TunerResults,
    epoch_histories,
    tag_number,
    trial_id_of,
    trial_rows,
)
from pipeline.distributed.search import WarmStart, make_searcher
from pipeline.distributed.trainable import TrialSettings, run_trial
from pipeline.errors import PipelineError, Terminated
from pipeline.storage import for_ray, locate

Tuner = tune.Tuner  # for the workflows' type hints: they never import Ray themselves


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
        builder=experiment.model.builder_reference,
        max_epochs=experiment.budget.max_epochs,
        seed=experiment.seed,
        cpus=experiment.resources.cpus,
        checkpoint_seconds=experiment.budget.checkpoint_seconds,
        metric=experiment.metric,
        mode=experiment.mode,
        metrics=experiment.metrics,
    )
    trainable = tune.with_parameters(run_trial, data=data, settings=settings)
    return tune.with_resources(
        trainable, {"cpu": experiment.resources.cpus, "gpu": experiment.resources.gpus}
    )


def make_tuner(
    experiment: Experiment,
    data: TuningData,
    *,
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
    *,
    endpoint: str | None = None,
    restart_errored: bool = False,
) -> tune.Tuner:
    """Resume an interrupted sweep: finished trials stay, the others continue from checkpoints
    (errored ones from their first epoch, with `restart_errored`)."""
    if not can_resume(sweep_path, endpoint):
        raise PipelineError(f"{sweep_path}: no sweep state to resume from")
    align_search_state(sweep_path, endpoint)
    path, filesystem = for_ray(sweep_path, endpoint)
    return tune.Tuner.restore(
        path,
        make_trainable(experiment, data),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
        storage_filesystem=filesystem,
    )


# The trial states of Ray's saved sweep state whose trials may still report to the searcher.
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


def align_search_state(sweep_path: str, endpoint: str | None = None) -> None:
    """Make the search's saved state agree with the trial list Ray saved, before a resume.

    Tune copies its state files (the trial list, the search's counter and the live trials of
    its concurrency limit) from the driver's staging folder to storage one by one, while it
    goes on rewriting them: a driver killed meanwhile can leave a trial list from one snapshot
    beside a search state from another. Resumed as they are, a counter ahead of the list
    never creates the trials the list lacks (the sweep ends short, as if interrupted), and
    live trials the list lacks hold the concurrency limit for ever (the sweep hangs). The list
    is the truth: the counter becomes the number of the last trial it holds (trials are
    numbered as they are created), and the live trials its unfinished ones."""
    filesystem, path = locate(sweep_path, endpoint)
    names = [info.base_name for info in filesystem.get_file_info(pafs.FileSelector(path))]
    trial_lists = sorted(fnmatch.filter(names, "experiment_state-*.json"))
    search_states = fnmatch.filter(names, "search_gen_state-*.json")
    if not trial_lists or not search_states:
        return
    saved = newest_trial_list(filesystem, path, trial_lists)
    trials = [json.loads(state) for state, _ in saved["trial_data"]]
    # The searcher's own state (its model's trials) is copied the same way, and cut off the same.
    searchers = fnmatch.filter(names, "searcher-state-*.pkl")
    if searchers and whole_state(filesystem, path, max(searchers), ray.cloudpickle.loads) is None:
        raise torn(path, "search state")
    search_path = f"{path}/{max(search_states)}"
    search = whole_state(filesystem, path, max(search_states), ray.cloudpickle.loads)
    if search is None:
        raise torn(path, "search state")
    search["counter"] = max((tag_number(t["experiment_tag"]) for t in trials), default=0)
    limit = search.get("name:ConcurrencyLimiter")
    if limit is not None:
        limit["live_trials"] = {t["trial_id"] for t in trials if t["status"] in UNFINISHED}
        limit["num_unfinished_live_trials"] = len(limit["live_trials"])
    # Written beside, then moved over: a driver killed now leaves one whole file or the other.
    with filesystem.open_output_stream(f"{search_path}.tmp") as stream:
        stream.write(ray.cloudpickle.dumps(search))  # type: ignore[no-untyped-call]
    filesystem.move(f"{search_path}.tmp", search_path)


def newest_trial_list(filesystem: pafs.FileSystem, path: str, names: list[str]) -> dict[str, Any]:
    """The newest whole trial list (one file per run of the sweep, named by its start), see
    `whole_state`. A list that is cut off with no whole copy left is set aside as
    `<name>.torn`, so that Tune resumes from the run before's, whose trials our reconciliation
    then squares with the tracking store; with no whole list left, the sweep cannot resume."""
    for name in reversed(names):
        saved: dict[str, Any] | None = whole_state(filesystem, path, name, json.loads)
        if saved is not None:
            return saved
        filesystem.move(f"{path}/{name}", f"{path}/{name}.torn")
    raise torn(path, "trial list")


def whole_state(
    filesystem: pafs.FileSystem, path: str, name: str, parse: Callable[[bytes], Any]
) -> Any | None:
    """A state file of the sweep's, parsed; None when it is cut off (empty or half-written, a
    copy the kill stopped) and no whole copy is left. Where the killed driver's own whole copy
    is still on this machine (Ray's staging folder), it is put back in storage and used."""
    with filesystem.open_input_stream(f"{path}/{name}") as stream:
        text = stream.readall()
    for candidate in (text, *staged_copies(path, name)):
        try:
            state = parse(candidate)
        except (ValueError, EOFError, pickle.UnpicklingError):
            continue
        if candidate is not text:  # the driver's own copy, whole: put it back in storage
            with filesystem.open_output_stream(f"{path}/{name}.tmp") as stream:
                stream.write(candidate)
            filesystem.move(f"{path}/{name}.tmp", f"{path}/{name}")
        return state
    return None


def torn(path: str, what: str) -> PipelineError:
    """The error of a sweep whose saved `what` was cut off, with no whole copy left."""
    return PipelineError(
        f"{path}: the sweep's saved {what} was cut off mid-write when it was killed, and no "
        "whole copy is left; start anew with --abandon"
    )


# Where a local Ray keeps its sessions (Ray's default temp folder; `ray start --temp-dir` moves it).
RAY_TEMP = Path(tempfile.gettempdir(), "ray")


def staged_copies(sweep_path: str, name: str) -> list[bytes]:
    """The copies of a state file in the staging folders Ray's drivers on this machine wrote it
    to before copying it to storage (`<ray temp>/session_*/artifacts/*/<sweep>/driver_artifacts`),
    newest first."""
    sweep = Path(sweep_path.rstrip("/")).name
    pattern = f"session_*/artifacts/*/{sweep}/driver_artifacts/{name}"
    found = sorted(RAY_TEMP.glob(pattern), key=lambda p: p.stat().st_mtime)
    return [copy.read_bytes() for copy in reversed(found)]


class TrialSink(Protocol):
    """Where a sweep's trial events go: the MLflow trial recorder, a progress display."""

    def start(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None: ...

    def result(self, trial_id: str, result: dict[str, Any]) -> None: ...

    def end(self, trial_id: str, state: str, error: str | None) -> None: ...

    def close(self) -> None: ...


class SweepWatcher(TrialSink, Protocol):
    """A sink that watches one run of `fit` (a progress display), told the budget first."""

    def begin(self, total: int, metric: str, mode: str) -> None: ...

    def settled(self, trial_id: str, number: int, state: str) -> None:
        """A trial that had ended before this run of the sweep began (a resumed sweep's)."""


# The watcher of the sweep that `fit` runs, set by `fit` for that run only. It is not part of the
# callback Ray pickles with the sweep's state, so that a resumed sweep is watched too.
running_watcher: ContextVar[SweepWatcher | None] = ContextVar("running_watcher", default=None)


class TrialEvents(tune.Callback):
    """Hands Tune's trial events to a sink (and the running watcher) as plain values: the sampled
    hyperparameters (flat), each epoch's result, the state a trial ended in and its error."""

    def __init__(self, sink: TrialSink, max_epochs: int) -> None:
        self.sink = sink
        self.max_epochs = max_epochs
        self.settled = False  # whether the watcher was told of the trials ended before this run

    # Ray pickles the callbacks with the Tuner: a restored one starts a run of its own.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "settled": False}

    def _sinks(self) -> list[TrialSink]:
        watcher = running_watcher.get()
        return [self.sink] if watcher is None else [self.sink, watcher]

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Tell the watcher, once, of the trials a resumed sweep had ended before (restored as
        Ray saved them; an errored trial restarted from scratch is a new trial): so that what it
        counts is the sweep's, not only this run's."""
        watcher = running_watcher.get()
        if self.settled or watcher is None:
            return
        self.settled = True
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                state = self._state(trial, errored=trial.status == "ERROR")
                watcher.settled(trial.trial_id, trial_number(trial), state)

    def _state(self, trial: Any, *, errored: bool) -> str:
        """completed, stopped, diverged or errored (`decisions.trial_state`)."""
        last = trial.last_result or {}
        return trial_state(last, planned_epochs(trial.config, self.max_epochs), errored)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        params = flatten_sample(trial.config)
        for sink in self._sinks():
            sink.start(trial.trial_id, trial_number(trial), params)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        for sink in self._sinks():
            sink.result(trial.trial_id, result)

    def _end(self, trial: Any, error: str | None) -> None:
        state = self._state(trial, errored=error is not None)
        for sink in self._sinks():
            sink.end(trial.trial_id, state, error)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, error_line(trial.error_file))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.sink.close()


def trial_number(trial: Any) -> int:
    """A trial's place in the searcher's order, from 1 (warm-start points first), as the
    searcher wrote it at the head of the trial's tag."""
    return tag_number(str(trial.experiment_tag))


def error_line(error_file: str | None) -> str:
    """The last line of a failed trial's traceback (the exception), as Ray saved it."""
    lines: list[str] = []
    if error_file:
        try:
            lines = Path(error_file).read_text(errors="replace").strip().splitlines()
        except OSError as exc:  # a full disk may not have kept it
            return f"(its traceback could not be read: {exc})"
    return lines[-1].strip() if lines else "(no traceback saved)"


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
    tuner: tune.Tuner,
    experiment: Experiment,
    watcher: SweepWatcher | None = None,
) -> TunerResults:
    """Run the sweep to its end, or until Ctrl-C or SIGTERM stops it gracefully (trials stopped,
    Tune's state saved for a resume), and tabulate its trials; `watcher` sees the trial events
    (and is closed at the end). A local Ray's processes are not in the driver's process group
    (`cluster.processes_of_their_own`): a stop sent to the group is the driver's alone."""
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
    watching = running_watcher.set(watcher)
    in_main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    stopped = False
    if in_main:
        previous = signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # not an earlier sweep's handler
    try:
        with tune_settings():
            grid = tuner.fit()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
            # Tune's Ctrl-C handler stays installed after a sweep that ran to its end, and puts
            # back the one it found when it catches a stop (Ctrl-C, or `stop`'s SIGUSR1): it
            # still there tells that the sweep was not stopped. Counting ended trials cannot:
            # Tune leaves the trials it stops TERMINATED too.
            tune_handles_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
            stopped = tune_handles_sigint and signal.getsignal(signal.SIGINT) is before
            if before is not None:  # None: a handler not set from Python, which Tune kept
                signal.signal(signal.SIGINT, before)
        if watcher is not None:
            watcher.close()
        running_watcher.reset(watching)
    histories = epoch_histories(grid, experiment.trial_scores)
    return TunerResults(
        rows=trial_rows(grid, experiment, histories),
        ended=grid.num_terminated + grid.num_errors,
        interrupted=stopped or terminated,
        terminated=terminated,
        histories=histories,
        lost_checkpoints=[
            trial_id_of(result)
            for result in (grid[i] for i in range(len(grid)))
            if result.error and LOST_CHECKPOINT in str(result.error)
        ],
    )
