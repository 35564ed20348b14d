"""The sweep's trial runs: one nested child run per trial, written by one batched writer.

All writes happen in the driver, on one background thread, batched: trials never reach the
tracking server, SQLite has a single writer, and Ray's event loop never waits on a write.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline import tags
from pipeline.config import Scalar
from pipeline.core.decisions import VALID_STATES
from pipeline.core.trials import trial_run_name
from pipeline.tracking.runs import best_metrics, child_runs, logged_epochs
from pipeline.tracking.store import Client, open_client

log = logging.getLogger(__name__)

MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call


class TrialRecorder:
    """Writes one child run per trial, nested under the sweep's parent run.

    Only the hyperparameters become params; the `scores` (`train_loss` and the `val_<score>`s,
    `Experiment.trial_scores`) are logged with `step=epoch`, buffered and written in batches. A
    trial that ends completed or stopped also gets its best epoch on `metric` (`best_val_acc`,
    `best_val_loss`, ..., `best_epoch`), so that the UI sorts trials the way the sweep ranks
    them. A resumed sweep finds its runs by `trial_id`.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        metric: str,
        mode: str,
        scores: tuple[str, ...],
        data: DatasetInput | None = None,
        warm_points: list[tuple[dict[str, Scalar], str]] | None = None,
        flush_seconds: float = 10.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.mode = mode
        self.scores = scores
        self.data = data  # the rows trials see, for each trial run's Dataset column
        self.warm_points = warm_points or []  # (point, source): trials at them are tagged so
        self.flush_seconds = flush_seconds
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._run_ids: dict[str, str] = {}  # trial id -> run id; touched by the writer thread only
        self._earlier_epochs: dict[str, list[dict[str, float]]] = {}  # resumed trials' (writer)
        self._logged_epoch: dict[str, int] = {}
        self._pending: dict[str, list[Metric]] = {}
        self._pending_tags: dict[str, list[RunTag]] = {}
        self._epochs: dict[str, list[dict[str, float]]] = {}  # trial id -> each epoch's metrics
        self._last_flush: dict[str, float] = {}
        self._open: set[str] = set()
        self.errors: list[str] = []
        self.busy_seconds = 0.0  # time spent inside MLflow calls

    # Ray pickles the sweep's callbacks (and so this recorder) with the sweep state, for resuming.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "tracking_uri",
            "experiment_id",
            "parent_run_id",
            "metric",
            "mode",
            "scores",
            "data",
            "warm_points",
            "flush_seconds",
        )
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- the writer thread --------------------------------------------------------------------

    def _submit(self, write: Callable[[], None]) -> None:
        if self._thread is None:
            self._client = open_client(self.tracking_uri)
            self._thread = threading.Thread(target=self._drain, name="mlflow-writer", daemon=True)
            self._thread.start()
            self._submit(self._load_existing_runs)
        self._queue.put(write)

    def _drain(self) -> None:
        while (write := self._queue.get()) is not None:
            started = time.perf_counter()
            try:
                write()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("MLflow write failed: %s", exc)
            self.busy_seconds += time.perf_counter() - started

    def _load_existing_runs(self) -> None:
        assert self._client is not None
        for run in child_runs(self._client, self.experiment_id, self.parent_run_id):
            trial_id = run.data.tags.get(tags.TRIAL_ID)
            if trial_id:
                self._run_ids[trial_id] = run.info.run_id

    def close(self) -> None:
        """Flush everything, end runs of trials that never ended as interrupted, stop the writer."""
        if self._thread is None:
            return
        for trial_id in list(self._open):
            self._flush(trial_id, [RunTag(tags.TRIAL_STATE, "interrupted")])
            self._submit(functools.partial(self._terminate, trial_id, "KILLED"))
        self._open.clear()
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    # --- writes (run on the writer thread, in submission order) -------------------------------

    def _start_run(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None:
        assert self._client is not None
        run_id = self._run_ids.get(trial_id)
        if run_id is not None:  # a resumed trial: keep its run, skip epochs it already logged
            self._client.update_run(run_id, status="RUNNING")
            self._earlier_epochs[trial_id] = logged_epochs(self._client, run_id, self.scores)
            self._logged_epoch[trial_id] = max(
                (int(e["epoch"]) for e in self._earlier_epochs[trial_id]), default=0
            )
            return
        name = trial_run_name(number, params)
        marks = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            MLFLOW_RUN_NAME: name,
            tags.TRIAL_ID: trial_id,
            tags.TRIAL_NUMBER: str(number),
            tags.TRIAL_STATE: "running",
        }
        source = next((s for p, s in self.warm_points if at_point(params, p)), None)
        if source is not None:
            marks[tags.WARM_START] = source
        run = self._client.create_run(self.experiment_id, run_name=name, tags=marks)
        self._run_ids[trial_id] = run.info.run_id
        self._client.log_batch(
            run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()]
        )
        if self.data is not None:
            self._client.log_inputs(run.info.run_id, [self.data])

    def _write_metrics(
        self,
        trial_id: str,
        metrics: list[Metric],
        tags: list[RunTag],
        epochs: list[dict[str, float]] | None = None,
    ) -> None:
        assert self._client is not None
        floor = self._logged_epoch.get(trial_id, 0)
        metrics = [m for m in metrics if m.step > floor]
        if epochs is not None:
            earlier = self._earlier_epochs.pop(trial_id, [])
            metrics += best_metrics(earlier + epochs, self.metric, self.mode)
        for start in range(0, max(len(metrics), 1), MLFLOW_BATCH):
            self._client.log_batch(
                self._run_ids[trial_id],
                metrics=metrics[start : start + MLFLOW_BATCH],
                tags=tags if start == 0 else [],
            )

    def _terminate(self, trial_id: str, status: str) -> None:
        assert self._client is not None
        self._client.set_terminated(self._run_ids[trial_id], status)

    # --- trial events (the driver's thread) ---------------------------------------------------

    def start(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None:
        """Trial `number` (in the order the searcher suggested it) started, or resumed, with
        these sampled hyperparameters."""
        self._last_flush[trial_id] = time.monotonic()
        self._open.add(trial_id)
        self._submit(lambda: self._start_run(trial_id, number, params))

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        """One epoch's result: its metrics are buffered, and flushed every `flush_seconds`."""
        now = int(time.time() * 1000)
        step = int(result["epoch"])
        # A trial restarted from a checkpoint older than its last report (its node was lost)
        # reports those epochs again: the first report of an epoch stands, so that a run's
        # epochs never go backwards or repeat.
        reported = self._epochs.get(trial_id)
        if reported and step <= reported[-1]["epoch"]:
            return
        if trial_id not in self._pending_tags:  # where it runs: known from its first result
            self._pending_tags[trial_id] = [
                RunTag(tags.HOST, str(result.get("hostname", ""))),
                RunTag(tags.NODE_IP, str(result.get("node_ip", ""))),
                RunTag(tags.NODE_ID, str(result.get("node_id", ""))),
                RunTag(tags.DEVICE, str(result.get("device", ""))),
            ]
        self._pending.setdefault(trial_id, []).extend(
            Metric(name, float(result[name]), now, step) for name in self.scores
        )
        epoch = {"epoch": float(step), **{name: float(result[name]) for name in self.scores}}
        self._epochs.setdefault(trial_id, []).append(epoch)
        if time.monotonic() - self._last_flush.get(trial_id, 0.0) >= self.flush_seconds:
            self._flush(trial_id)

    def end(self, trial_id: str, state: str, error: str | None) -> None:
        """The trial ended in `state` (with `error`, if it failed): flush it with its best epoch,
        tag the state and end its run."""
        ending = [RunTag(tags.TRIAL_STATE, state)]
        if error is not None:
            ending.append(RunTag(tags.TRIAL_ERROR, error[:5000]))  # MLflow's limit on a tag value
        epochs = self._epochs.pop(trial_id, [])
        self._flush(trial_id, ending, epochs if state in VALID_STATES else None)
        status = "FAILED" if error is not None else "FINISHED"
        self._submit(lambda: self._terminate(trial_id, status))
        self._open.discard(trial_id)

    def _flush(
        self,
        trial_id: str,
        tags: list[RunTag] | None = None,
        epochs: list[dict[str, float]] | None = None,
    ) -> None:
        """Hand the trial's buffered metrics and tags to the writer as one batch (with its best
        epoch among `epochs` and those logged before a resume, if given)."""
        metrics = self._pending.pop(trial_id, [])
        all_tags = self._pending_tags.get(trial_id, []) + (tags or [])
        self._pending_tags[trial_id] = []
        self._last_flush[trial_id] = time.monotonic()
        if metrics or all_tags or epochs:
            self._submit(
                functools.partial(self._write_metrics, trial_id, metrics, all_tags, epochs)
            )


def at_point(params: dict[str, Scalar], point: dict[str, Scalar]) -> bool:
    """Whether a trial's sampled parameters are those of a warm-start point."""
    for name, value in point.items():
        given = params.get(name)
        if isinstance(value, float) and isinstance(given, (int, float)):
            if not math.isclose(given, value, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif given != value:
            return False
    return True
