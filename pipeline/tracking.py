"""The one place that talks to MLflow: the sweep's parent run and one nested child run per trial.

All writes happen in the driver, on one background thread, batched: trials never reach the
tracking server, SQLite has a single writer, and Ray's event loop never waits on a write.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from pipeline.config import Experiment, Hyperparameters, Scalar, flatten_sample
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TRIAL_METRICS = ("train_loss", "val_loss", "val_acc")
TRIAL_STATES = ("completed", "stopped", "diverged", "errored", "interrupted")
MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call


SERVER_TIMEOUT_S = 8.0  # an unreachable tracking server fails the command within this


def check_tracking_server(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast when an http(s) tracking server does not answer its /health endpoint.

    Retried for `timeout_s` (a server that is restarting gets a moment); stores that are not
    servers (SQLite, PostgreSQL) are left to MLflow.
    """
    if not uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=min(4.0, remaining)):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # answering, e.g. 401 from an authenticating proxy
                return
            problem = f"HTTP {exc.code}"
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            problem = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        if deadline - time.monotonic() < 1.0:
            raise PipelineError(
                f"MLflow tracking server {uri} cannot be reached ({problem}); start it "
                "(make mlflow-server) or unset MLFLOW_TRACKING_URI to use the local store"
            )
        time.sleep(1.0)


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` for the block (model logging and loading use
    it; everything else here passes the URI to a client explicitly)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def trial_state(last_result: dict[str, Any] | None, planned_epochs: int, errored: bool) -> str:
    """completed (trained all its epochs), stopped (early, by ASHA), diverged or errored."""
    if errored:
        return "errored"
    if not last_result:
        return "stopped"
    if last_result.get("diverged"):
        return "diverged"
    return "completed" if int(last_result.get("epoch", 0)) >= planned_epochs else "stopped"


def planned_epochs(config: dict[str, Any], max_epochs: int) -> int:
    return Hyperparameters.from_params(flatten_sample(config)).planned_epochs(max_epochs)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`, if given) when new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise PipelineError(
                f"MLflow experiment '{name}' is deleted; restore it or pick another name"
            )
        return str(found.experiment_id)
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return str(client.create_experiment(name, artifact_location=location))


def flat_settings(experiment: Experiment) -> dict[str, Scalar]:
    """The experiment's settings as dotted keys (params excluded: they are the trials' business)."""
    dumped = experiment.model_dump(mode="json", exclude={"params", "search"})
    flat: dict[str, Scalar] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif node is not None and node != "":
            flat[prefix.rstrip(".")] = node

    walk(dumped, "")
    flat["search.algorithm"] = experiment.search.algorithm
    flat["search.n_initial_points"] = experiment.n_initial_points
    flat["search.points_to_evaluate"] = len(experiment.search.points_to_evaluate)
    return flat


def start_parent_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    experiment: Experiment,
    space_text: str,
    tags: dict[str, str],
    params: dict[str, Scalar],
) -> str:
    """Open the sweep's parent run: its settings, the search-space file and the resolved config."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **tags}
    )
    run_id = str(run.info.run_id)
    settings = {**flat_settings(experiment), **params}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    client.log_text(run_id, space_text, "search_space.yaml")
    client.log_text(run_id, json.dumps(experiment.model_dump(mode="json"), indent=2), "config.json")
    return run_id


def finish_parent_run(
    client: MlflowClient,
    run_id: str,
    table: pd.DataFrame,
    best: dict[str, Any] | None,
    param_names: list[str],
    status: str,
) -> None:
    """Record the best trial and the trial table on the parent run and end it with `status`."""
    params: list[Param] = []
    metrics: list[Metric] = []
    now = int(time.time() * 1000)
    if best is not None:
        params = [Param(f"best.{n}", str(best[n])) for n in param_names if pd.notna(best.get(n))]
        params.append(Param("best.trial_id", str(best["trial_id"])))
        for name in ("val_acc", "val_loss", "epoch"):
            metrics.append(Metric(f"best_{name}", float(best[name]), now, 0))
    counts = table["state"].value_counts() if len(table) else pd.Series(dtype=int)
    tags = [RunTag(f"trials.{state}", str(int(counts.get(state, 0)))) for state in TRIAL_STATES]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    client.log_text(run_id, table.to_csv(index=False), "trials.csv")
    client.set_terminated(run_id, status)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every run nested under the parent run."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_states(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial id -> the state its child run was tagged with."""
    runs = child_runs(client, experiment_id, parent_run_id)
    return {
        r.data.tags["trial_id"]: r.data.tags.get("trial_state", "")
        for r in runs
        if "trial_id" in r.data.tags
    }


def close_open_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, status: str
) -> None:
    """End the parent and any child still RUNNING, so no run outlives its sweep."""
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, status)


class TrialLogger(tune.Callback):
    """Tune callback writing one child run per trial, nested under the sweep's parent run.

    Only the hyperparameters become params; `train_loss`, `val_loss` and `val_acc` are logged with
    `step=epoch`, buffered and written in batches. A resumed sweep finds its runs by `trial_id`.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        flush_seconds: float = 10.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.flush_seconds = flush_seconds
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: MlflowClient | None = None
        self._run_ids: dict[str, str] = {}  # trial id -> run id; touched by the writer thread only
        self._logged_epoch: dict[str, int] = {}
        self._pending: dict[str, list[Metric]] = {}
        self._pending_tags: dict[str, list[RunTag]] = {}
        self._last_flush: dict[str, float] = {}
        self._open: set[str] = set()
        self.errors: list[str] = []
        self.busy_seconds = 0.0  # time spent inside MLflow calls

    # Ray pickles the run config (and so its callbacks) with the sweep state, for `restore`.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "max_epochs", "flush_seconds")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- the writer thread --------------------------------------------------------------------

    def _submit(self, write: Callable[[], None]) -> None:
        if self._thread is None:
            self._client = MlflowClient(self.tracking_uri)
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
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self._run_ids[trial_id] = run.info.run_id

    def close(self) -> None:
        """Flush everything, end runs of trials that never ended as interrupted, stop the writer."""
        if self._thread is None:
            return
        for trial_id in list(self._open):
            self._flush(trial_id, [RunTag("trial_state", "interrupted")])
            self._submit(functools.partial(self._terminate, trial_id, "KILLED"))
        self._open.clear()
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    # --- writes (run on the writer thread, in submission order) -------------------------------

    def _start_run(self, trial_id: str, params: dict[str, Scalar]) -> None:
        assert self._client is not None
        run_id = self._run_ids.get(trial_id)
        if run_id is not None:  # a resumed trial: keep its run, skip epochs it already logged
            self._client.update_run(run_id, status="RUNNING")
            history = self._client.get_metric_history(run_id, "val_acc")
            self._logged_epoch[trial_id] = max((m.step for m in history), default=0)
            return
        run = self._client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                MLFLOW_RUN_NAME: trial_id,
                "trial_id": trial_id,
                "trial_state": "running",
            },
        )
        self._run_ids[trial_id] = run.info.run_id
        self._client.log_batch(
            run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()]
        )

    def _write_metrics(self, trial_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        assert self._client is not None
        floor = self._logged_epoch.get(trial_id, 0)
        metrics = [m for m in metrics if m.step > floor]
        for start in range(0, max(len(metrics), 1), MLFLOW_BATCH):
            self._client.log_batch(
                self._run_ids[trial_id],
                metrics=metrics[start : start + MLFLOW_BATCH],
                tags=tags if start == 0 else [],
            )

    def _terminate(self, trial_id: str, status: str) -> None:
        assert self._client is not None
        self._client.set_terminated(self._run_ids[trial_id], status)

    # --- Tune hooks (driver thread) -----------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        params = flatten_sample(trial.config)
        self._last_flush[trial.trial_id] = time.monotonic()
        self._open.add(trial.trial_id)
        self._submit(lambda: self._start_run(trial.trial_id, params))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        trial_id = trial.trial_id
        now = int(time.time() * 1000)
        step = int(result["epoch"])
        if trial_id not in self._pending_tags:  # where it runs: known from its first result
            self._pending_tags[trial_id] = [
                RunTag("host", str(result.get("hostname", ""))),
                RunTag("node_ip", str(result.get("node_ip", ""))),
                RunTag("node_id", str(result.get("node_id", ""))),
                RunTag("device", str(result.get("device", ""))),
            ]
        self._pending.setdefault(trial_id, []).extend(
            Metric(name, float(result[name]), now, step) for name in TRIAL_METRICS
        )
        if time.monotonic() - self._last_flush.get(trial_id, 0.0) >= self.flush_seconds:
            self._flush(trial_id)

    def _flush(self, trial_id: str, tags: list[RunTag] | None = None) -> None:
        """Hand the trial's buffered metrics and tags to the writer as one batch."""
        metrics = self._pending.pop(trial_id, [])
        all_tags = self._pending_tags.get(trial_id, []) + (tags or [])
        self._pending_tags[trial_id] = []
        self._last_flush[trial_id] = time.monotonic()
        if metrics or all_tags:
            self._submit(functools.partial(self._write_metrics, trial_id, metrics, all_tags))

    def _end_trial(self, trial: Any, errored: bool) -> None:
        state = trial_state(
            trial.last_result, planned_epochs(trial.config, self.max_epochs), errored
        )
        self._flush(trial.trial_id, [RunTag("trial_state", state)])
        status = "FAILED" if errored else "FINISHED"
        self._submit(lambda: self._terminate(trial.trial_id, status))
        self._open.discard(trial.trial_id)
        result = trial.last_result or {}
        log.info(
            "trial %s %s at epoch %s: val_acc=%.4f val_loss=%.4f",
            trial.trial_id,
            state,
            result.get("epoch", 0),
            result.get("val_acc", float("nan")),
            result.get("val_loss", float("nan")),
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end_trial(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end_trial(trial, errored=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.close()
