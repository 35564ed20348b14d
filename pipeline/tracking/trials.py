"""The sweep's trial runs: one nested child run per trial, written by one batched writer.

All writes happen in the driver, on one background thread, batched, through the sweep's spool:
trials never reach the tracking server, SQLite has a single writer, Ray's event loop never
waits on a write, and a store that is away loses nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline import tags
from pipeline.config import Scalar
from pipeline.core.decisions import VALID_STATES
from pipeline.core.trials import trial_run_name
from pipeline.tracking import runs
from pipeline.tracking.runs import best_metrics, child_runs, logged_epochs
from pipeline.tracking.spool import Sender, SenderProcess, Spool, Write, spool_file
from pipeline.tracking.store import Client, open_client

log = logging.getLogger(__name__)

MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call
# From this many trials, a sweep's writes are sent by a process of its own: the store's calls
# cost the driver's loop about 26 ms of CPU per trial (SQLite store, 2 cores), and a process
# about 2.5 s of CPU to start (importing MLflow, opening the store).
OWN_PROCESS_FROM_TRIALS = 100


class TrialWriter:
    """Sends one sweep's trial writes (see `Spool`) to the store, each idempotent: sent again
    after a lost answer or a killed driver, it changes nothing more.

    - `start` finds the trial's run by `trial_id` (a resumed trial, or a start already
      delivered, in full or in part) or creates it, with its tags, hyperparameters (params,
      write-once) and data, whichever of those it lacks;
    - `log` sends epochs past those the run holds (each metric keeps the timestamp it was
      given, so a repeat is dropped by the store), the tags, and, once the trial has ended, its
      best epoch among all it logged;
    - `end` ends the run.
    """

    def __init__(self, client: Client, header: dict[str, Any]) -> None:
        self.client = client
        self.experiment_id = str(header["experiment_id"])
        self.parent_run_id = str(header["parent_run_id"])
        self.metric = str(header["metric"])
        self.mode = str(header["mode"])
        self.scores = tuple(header["scores"])
        data = header.get("data")
        self.data = None if data is None else runs.LoggedData(**data).as_input()
        self._run_ids: dict[str, str] | None = None  # trial id -> run id, read on first need
        self._logged: dict[str, list[dict[str, float]]] = {}  # epochs a run held when reopened
        self._tried: set[str] = set()  # trials whose start was sent at least once

    def deliver(self, write: Write) -> None:
        """Send one write; an error from the store propagates (see `store.unreachable`)."""
        op = write["op"]
        if op == "start":
            self._start(write)
        elif op == "log":
            self._log(write)
        elif op == "end":
            self.client.set_terminated(self._run_id(write["trial"]), write["status"])
        else:
            raise ValueError(f"unknown tracking write {op!r}")

    def _runs(self) -> dict[str, str]:
        if self._run_ids is None:
            self._run_ids = {}
            for run in child_runs(self.client, self.experiment_id, self.parent_run_id):
                trial_id = run.data.tags.get(tags.TRIAL_ID)
                if trial_id:
                    self._run_ids[trial_id] = run.info.run_id
        return self._run_ids

    def _run_id(self, trial_id: str) -> str:
        return self._runs()[trial_id]

    def _start(self, write: Write) -> None:
        trial_id = write["trial"]
        if trial_id in self._tried and trial_id not in self._runs():
            self._run_ids = None  # a try whose answer was lost may have made the run: look again
        self._tried.add(trial_id)
        run_id = self._runs().get(trial_id)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=write["name"], tags=write["marks"]
            )
            self._runs()[trial_id] = run_id = run.info.run_id
            self._describe(run_id, write["params"], has_data=False)
            return
        # Resumed, started before, or a start cut short after its run was made: complete it,
        # keeping what it logged.
        run = self.client.get_run(run_id)
        missing = {k: v for k, v in write["params"].items() if k not in run.data.params}
        has_data = run.inputs is not None and bool(run.inputs.dataset_inputs)
        self._describe(run_id, missing, has_data=has_data)
        self.client.update_run(run_id, status="RUNNING")
        self._logged[trial_id] = logged_epochs(self.client, run_id, self.scores)

    def _describe(self, run_id: str, params: dict[str, str], *, has_data: bool) -> None:
        """Give a trial's run its hyperparameters (write-once) and, unless it `has_data`, the
        rows its trial sees."""
        if params:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        if self.data is not None and not has_data:
            self.client.log_inputs(run_id, [self.data])

    def _log(self, write: Write) -> None:
        trial_id = write["trial"]
        logged = self._logged.get(trial_id, [])
        floor = max((int(e["epoch"]) for e in logged), default=0)
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in write["metrics"] if step > floor]
        epochs = write.get("epochs")
        if epochs is not None:  # the trial ended: its best epoch among every one it logged
            given = {e["epoch"] for e in epochs}
            earlier = [e for e in logged if e["epoch"] not in given]
            metrics += best_metrics(earlier + epochs, self.metric, self.mode)
        marks = [RunTag(k, v) for k, v in write["tags"].items()]
        run_id = self._run_id(trial_id)
        for start in range(0, max(len(metrics), 1), MLFLOW_BATCH):
            self.client.log_batch(
                run_id,
                metrics=metrics[start : start + MLFLOW_BATCH],
                tags=marks if start == 0 else [],
            )


class TrialRecorder:
    """Writes one child run per trial, nested under the sweep's parent run.

    Only the hyperparameters become params; the `scores` (`train_loss` and the `val_<score>`s,
    `Experiment.trial_scores`) are logged with `step=epoch`, buffered and written in batches. A
    trial that ends completed or stopped also gets its best epoch on `metric` (`best_val_acc`,
    `best_val_loss`, ..., `best_epoch`), so that the UI sorts trials the way the sweep ranks
    them. A resumed sweep finds its runs by `trial_id`.

    Every write is kept in the sweep's spool (under `spool_dir`) before it is sent, and sent by
    one background thread, in order: in the driver, or, for a sweep of `trials` from
    `OWN_PROCESS_FROM_TRIALS` on, in a process of its own (`SenderProcess`). While the store is
    unreachable the thread retries with backoff, and the sweep goes on (one line says when the
    outage began, one when it ended);
    `close` waits for the store up to `outage_timeout` seconds, then leaves what is undelivered
    in the spool (`undelivered`) for `tune --resume` or `python -m pipeline sync`.
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
        spool_dir: Path,
        outage_timeout: float,
        data: runs.LoggedData | None = None,
        warm_points: list[tuple[dict[str, Scalar], str]] | None = None,
        flush_seconds: float = 10.0,
        trials: int = 0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.mode = mode
        self.scores = scores
        self.spool_dir = spool_dir
        self.outage_timeout = outage_timeout
        self.data = data  # the rows trials see, for each trial run's Dataset column
        self.warm_points = warm_points or []  # (point, source): trials at them are tagged so
        self.flush_seconds = flush_seconds
        self.own_process = trials >= OWN_PROCESS_FROM_TRIALS
        self._reset()

    def _reset(self) -> None:
        self._spool: Spool | None = None
        self._sender: Sender | SenderProcess | None = None
        self._pending: dict[str, list[list[Any]]] = {}
        self._pending_tags: dict[str, dict[str, str]] = {}
        self._epochs: dict[str, list[dict[str, float]]] = {}  # trial id -> each epoch's metrics
        self._last_flush: dict[str, float] = {}
        self._open: set[str] = set()
        self.errors: list[str] = []
        self.busy_seconds = 0.0  # time spent inside MLflow calls
        self.cpu_seconds = 0.0  # of it, the sending thread's own CPU
        self.undelivered = 0  # writes left in the spool at `close` (the store stayed away)

    # Ray pickles the sweep's callbacks (and so this recorder) with the sweep state, for resuming.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "tracking_uri",
            "experiment_id",
            "parent_run_id",
            "metric",
            "mode",
            "scores",
            "spool_dir",
            "outage_timeout",
            "data",
            "warm_points",
            "flush_seconds",
            "own_process",
        )
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def spool_path(self) -> Path:
        return spool_file(self.spool_dir, self.tracking_uri, self.parent_run_id)

    def _send(self, *writes: Write) -> None:
        """Keep `writes` in the spool, then queue them for the sender (started on first use:
        a resumed sweep's first writes come after what a killed driver left undelivered)."""
        if not writes:
            return
        if self._sender is None:
            header = {
                "kind": "trials",
                "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id,
                "metric": self.metric,
                "mode": self.mode,
                "scores": list(self.scores),
                "data": None if self.data is None else dataclasses.asdict(self.data),
            }
            self._spool = Spool.open(self.spool_dir, self.tracking_uri, self.parent_run_id, header)
            if self.own_process:
                command = [sys.executable, "-m", "pipeline.tracking.trial_sender"]
                setup = {"tracking_uri": self.tracking_uri}
                self._sender = SenderProcess(self._spool, command, setup, self.errors)
            else:
                writer = TrialWriter(open_client(self.tracking_uri), header)
                self._sender = Sender(self._spool, writer.deliver, self.errors)
        assert self._spool is not None
        self._sender.send(list(writes))

    def close(self) -> None:
        """Flush everything, end runs of trials that never ended as interrupted, and wait for
        the store to accept every write (up to `outage_timeout` while it is unreachable)."""
        if self._sender is None:
            return
        for trial_id in list(self._open):
            ending = self._buffered(trial_id, {tags.TRIAL_STATE: "interrupted"})
            self._send(*ending, {"op": "end", "trial": trial_id, "status": "KILLED"})
        self._open.clear()
        self.undelivered = self._sender.finish(self.outage_timeout)
        self.busy_seconds = self._sender.busy_seconds
        self.cpu_seconds = self._sender.cpu_seconds
        self._sender = None

    # --- trial events (the driver's thread) ---------------------------------------------------

    def start(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None:
        """Trial `number` (in the order the searcher suggested it) started, or resumed, with
        these sampled hyperparameters."""
        self._last_flush[trial_id] = time.monotonic()
        self._open.add(trial_id)
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
        shown = {k: str(v) for k, v in params.items()}
        self._send(
            {"op": "start", "trial": trial_id, "name": name, "marks": marks, "params": shown}
        )

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
            self._pending_tags[trial_id] = {
                tags.HOST: str(result.get("hostname", "")),
                tags.NODE_IP: str(result.get("node_ip", "")),
                tags.NODE_ID: str(result.get("node_id", "")),
                tags.DEVICE: str(result.get("device", "")),
            }
        self._pending.setdefault(trial_id, []).extend(
            [name, float(result[name]), now, step] for name in self.scores
        )
        epoch = {"epoch": float(step), **{name: float(result[name]) for name in self.scores}}
        self._epochs.setdefault(trial_id, []).append(epoch)
        if time.monotonic() - self._last_flush.get(trial_id, 0.0) >= self.flush_seconds:
            self._send(*self._buffered(trial_id))

    def end(self, trial_id: str, state: str, error: str | None) -> None:
        """The trial ended in `state` (with `error`, if it failed): flush it with its best epoch,
        tag the state and end its run."""
        ending = {tags.TRIAL_STATE: state}
        if error is not None:
            ending[tags.TRIAL_ERROR] = error[:5000]  # MLflow's limit on a tag value
        epochs = self._epochs.pop(trial_id, [])
        logged = self._buffered(trial_id, ending, epochs if state in VALID_STATES else None)
        status = "FAILED" if error is not None else "FINISHED"
        # One batch (one append to the spool) for the trial's last epochs and its end.
        self._send(*logged, {"op": "end", "trial": trial_id, "status": status})
        self._open.discard(trial_id)

    def _buffered(
        self,
        trial_id: str,
        marks: dict[str, str] | None = None,
        epochs: list[dict[str, float]] | None = None,
    ) -> list[Write]:
        """The trial's buffered metrics and tags (and `marks`) as one write, taken from the
        buffer (with its best epoch among `epochs` and those logged before a resume, if
        given); none if nothing was buffered."""
        metrics = self._pending.pop(trial_id, [])
        all_tags = {**self._pending_tags.get(trial_id, {}), **(marks or {})}
        self._pending_tags[trial_id] = {}
        self._last_flush[trial_id] = time.monotonic()
        if not (metrics or all_tags or epochs):
            return []
        return [
            {"op": "log", "trial": trial_id, "metrics": metrics, "tags": all_tags, "epochs": epochs}
        ]


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
