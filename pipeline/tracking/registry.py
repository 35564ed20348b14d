"""The MLflow model registry: register a retrained model, its versions and their aliases, load
a version pickle-free, delete the oldest versions, and the lock on a model's aliases.

Aliases: `challenger` (the newest registered candidate), `champion` (the model in service) and
`previous-champion` (what `rollback` restores); `promotion` moves them.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from pipeline import tags
from pipeline.core.data import Split
from pipeline.core.decisions import Selection
from pipeline.errors import PipelineError
from pipeline.tracking.locks import LOCK_PREFIX, LockHeld, StoreLock
from pipeline.tracking.models import RetrainRecord, read_selection
from pipeline.tracking.runs import run_link, set_run_tags
from pipeline.tracking.store import Client, use_tracking_uri
from pipeline.tracking.sweeps import SweepRecord

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
ALIASES_WAIT_S = 120.0  # a promotion re-scores two models: tens of seconds


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version, loaded pickle-free, with the metadata it was logged with."""

    version: str
    model: PyFuncModel
    metadata: dict[str, Any]

    def predict_outputs(self, features: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Class probabilities (rows, classes), or a regression's predictions (rows,), of flat
        feature rows or a table's rows."""
        return np.asarray(self.model.predict(features), dtype=np.float64)


def register_challenger(
    client: Client,
    tracking_uri: str,
    name: str,
    *,
    sweep: SweepRecord,
    record: RetrainRecord,
    split: Split,
    selection: Selection,
) -> str:
    """A new version of `name` from the retrained model, tagged and given the `challenger` alias;
    returns the version."""
    experiment = client.get_experiment(sweep.experiment_id).name
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description=f"The best trial of each sweep of MLflow experiment '{experiment}', "
            "retrained on train + validation and tested once on the held-out test split.",
        )
    report = record.report
    trial = sweep.best
    interval = "[{:.4f}, {:.4f}]".format(*report.interval)
    numbered = {} if trial.number is None else {tags.TRIAL_NUMBER: str(trial.number)}
    marks = {
        tags.PARENT_RUN_ID: sweep.parent_run_id,
        tags.RETRAIN_RUN_ID: record.run_id,
        tags.TRIAL_ID: trial.trial_id,
        **numbered,
        tags.DATA_FINGERPRINT: split.fingerprint,
        tags.RETRAINED_EPOCHS: str(sweep.epochs),
        tags.trial_score(sweep.experiment.metric): f"{sweep.score:.6f}",
        tags.selection_score(sweep.experiment.metric): f"{selection.score:.6f}",
        **{tags.test_score(name): f"{value:.6f}" for name, value in report.scores.items()},
        tags.test_interval(report.metric): interval,
        **record.origin,
    }
    model_id = record.model_uri.removeprefix("models:/")
    with use_tracking_uri(tracking_uri):  # the registry resolves a models:/ source through it
        version = client.create_model_version(
            name,
            source=record.model_uri,
            run_id=record.run_id,
            tags=marks,
            model_id=model_id,
            description=f"Trial {run_link(sweep.experiment_id, record.trial_run_id, trial.name)}"
            f" of sweep {run_link(sweep.experiment_id, sweep.parent_run_id, sweep.run_name)} "
            f"(experiment '{experiment}'), "
            f"{run_link(sweep.experiment_id, record.run_id, 'retrained')} for {sweep.epochs} "
            f"epochs: {report.name} {report.value:.4f} (95% interval {interval}) on "
            f"{split.test.size} held-out rows; {sweep.experiment.metric} {selection.score:.4f} "
            f"when selected. {selection.reason()}",
        )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    number = str(version.version)
    # The trial's run points at the version it became (MLflow lists a version only on its
    # source run, the retrain).
    link = version_link(name, number)
    retrain = run_link(sweep.experiment_id, record.run_id, "retrain run")
    note = f"Registered as {link}: retrained on train + validation in the {retrain}."
    if record.trial_run_id is not None:
        marks = {tags.REGISTERED_AS: f"{name}/{number}", MLFLOW_RUN_NOTE: note}
        set_run_tags(client, record.trial_run_id, marks)
    return number


def version_link(name: str, version: str) -> str:
    """A Markdown link to a model version's page in MLflow's UI."""
    return f"[{name} version {version}](#/models/{name}/versions/{version})"


def check_model(client: Client, name: str) -> dict[str, str]:
    """The model's aliases (alias -> version); an unknown model is an error listing the others."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        models = client.search_registered_models(max_results=100)
        known = sorted(m.name for m in models if not m.name.startswith(LOCK_PREFIX))
        listed = ", ".join(known) if known else "none yet; run `make tune`"
        raise PipelineError(f"no registered model '{name}' (registered: {listed})") from None
    return {str(alias): str(version) for alias, version in model.aliases.items()}


def version_by_alias(client: Client, name: str, alias: str) -> str:
    """The version `alias` points at; an unset alias is an error listing those that are set."""
    return aliased(check_model(client, name), name, alias)


def aliased(aliases: dict[str, str], name: str, alias: str) -> str:
    """The version `alias` points at among the model's `aliases`."""
    if alias not in aliases:
        listed = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        raise PipelineError(f"model '{name}' has no alias '{alias}' (aliases: {listed})")
    return aliases[alias]


def model_aliases(client: Client, name: str) -> dict[str, str]:
    """The model's aliases (alias -> version); none for a model not registered yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    return {str(alias): str(version) for alias, version in model.aliases.items()}


def version_tags(client: Client, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def tag_version(client: Client, name: str, version: str, marks: dict[str, str]) -> None:
    for key, value in marks.items():
        client.set_model_version_tag(name, version, key, value)


def version_of_sweep(client: Client, name: str, parent_run_id: str) -> str | None:
    """The version registered from this sweep, if one was (the newest, should there be more)."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.{tags.PARENT_RUN_ID} = '{parent_run_id}'"
    )
    return str(max(int(v.version) for v in found)) if found else None


@dataclass(frozen=True)
class RegisteredWinner:
    """The version a sweep produced, with the trial it was retrained from and why."""

    version: str
    trial_id: str
    selection: Selection | None  # None: its retrain run recorded no selection.json


def winner_of_sweep(
    client: Client, name: str, parent_run_id: str, mode: str
) -> RegisteredWinner | None:
    """The newest version registered from this sweep (`version_of_sweep`), if one was, with
    its retrain run's selection (`mode`: the metric's direction, see `read_selection`)."""
    number = version_of_sweep(client, name, parent_run_id)
    if number is None:
        return None
    version = client.get_model_version(name, number)
    selection = None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(str(version.run_id), "selection.json", folder)
            selection = read_selection(json.loads(Path(path).read_text()), mode)
        except (MlflowException, OSError, KeyError, ValueError):
            pass
    return RegisteredWinner(number, version.tags.get(tags.TRIAL_ID, ""), selection)


def prune_versions(client: Client, tracking_uri: str, name: str, keep: int) -> list[str]:
    """Delete the oldest versions (with their models' files) until at most `keep` remain; a
    version that holds an alias is never deleted. Returns the deleted versions."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if keep < 1:
        raise PipelineError(f"keep must be at least 1, got {keep}")
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    aliased = set(model_aliases(client, name).values())
    deletable = [v for v in versions if str(v.version) not in aliased]
    deleted = []
    for version in deletable[: max(0, len(versions) - keep)]:
        model_id = str(version.source).removeprefix("models:/")
        with use_tracking_uri(tracking_uri):  # resolves mlflow-artifacts: URIs of a server
            location = client.get_logged_model(model_id).artifact_location
            get_artifact_repository(location).delete_artifacts()  # type: ignore[no-untyped-call]
        client.delete_logged_model(model_id)
        client.delete_model_version(name, version.version)
        deleted.append(str(version.version))
    return deleted


def check_version(client: Client, name: str, version: int) -> str:
    """`version` as a string, if the model has it."""
    check_model(client, name)
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        listed = ", ".join(str(v) for v in versions) or "none"
        raise PipelineError(
            f"model '{name}' has no version {version} (versions: {listed})"
        ) from None
    return str(version)


def logged_test_score(client: Client, name: str, version: str, score: str) -> float | None:
    """The test score (`acc`, `rmse`, ...) a version was registered with, if it was tagged
    with one."""
    logged = client.get_model_version(name, version).tags.get(tags.test_score(score))
    return float(logged) if logged else None


def load_version(tracking_uri: str, name: str, version: str) -> LoadedVersion:
    """Load a registered version through pyfunc (pt2: no pickle), with its logged metadata."""
    with use_tracking_uri(tracking_uri):
        try:
            # MLflow's check of the model's pinned requirements scans every installed package
            # (a second per command); a torch that cannot read the pt2 program fails here anyway.
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}", suppress_warnings=True)
        except MlflowException as exc:
            raise PipelineError(f"cannot load model '{name}' version {version}: {exc}") from None
    metadata = model.metadata.metadata or {}
    missing = [k for k in ("class_names", "feature_names", "data", "seed") if k not in metadata]
    if missing:
        raise PipelineError(
            f"model '{name}' version {version} was not logged by this pipeline "
            f"(its metadata lacks {', '.join(missing)})"
        )
    return LoadedVersion(version, model, metadata)


@contextmanager
def holding_aliases(
    client: Client, name: str, wait_s: float = ALIASES_WAIT_S, poll_s: float = 1.0
) -> Iterator[None]:
    """Hold the model's aliases: promotions, rollbacks and nightly gates of one model, on any
    machine sharing the store, decide and apply one at a time, each on the aliases it read.
    Waits `wait_s` for another to finish, then refuses."""
    lock = StoreLock(client, f"aliases.{name}")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            break
        except LockHeld as held:
            if time.monotonic() >= deadline:
                raise PipelineError(
                    f"model '{name}': another promotion or rollback is changing its aliases "
                    f"({held.holder.describe()}); try again when it ends"
                ) from None
            time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()
