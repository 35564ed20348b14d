"""The MLflow model registry: register a retrained model, promote it by alias, roll back.

Aliases: `challenger` (the newest registered candidate), `champion` (the model in service) and
`previous-champion` (what `rollback` restores). Promotion re-scores both models on the same test
split, rebuilt from the candidate's recorded data settings; numbers logged earlier are never
trusted, since the data may have changed since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline import tags
from pipeline.config import DataConfig
from pipeline.core.data import Dataset, Split, split_dataset
from pipeline.core.decisions import Selection, judge_promotion
from pipeline.core.evaluate import TestReport, score
from pipeline.core.sources import load_dataset
from pipeline.errors import PipelineError
from pipeline.tracking.locks import LOCK_PREFIX, LockHeld, StoreLock
from pipeline.tracking.models import RetrainRecord
from pipeline.tracking.store import Client, use_tracking_uri
from pipeline.tracking.sweeps import SweepRecord

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
NOTHING = "nothing to promote"  # the action when there is no challenger
PREVIOUS_CHAMPION = "previous-champion"
ALIASES_WAIT_S = 120.0  # a promotion re-scores two models: tens of seconds
# What must match for two models to be compared on one test split.
DATA_IDENTITY = ("dataset", "feature_names", "class_names")


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version, loaded pickle-free, with the metadata it was logged with."""

    version: str
    model: PyFuncModel
    metadata: dict[str, Any]

    def predict_probabilities(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(features), dtype=np.float64)


@dataclass(frozen=True)
class Decision:
    """What promote or rollback did, and on which evidence."""

    model: str
    action: str  # promoted, kept, forced, rolled back, or NOTHING (no challenger)
    candidate: str  # the version the decision was about
    champion_before: str | None
    champion_after: str | None
    reason: str
    candidate_report: TestReport | None = None
    champion_report: TestReport | None = None


def register_challenger(
    client: Client,
    tracking_uri: str,
    name: str,
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
    trial_id = str(sweep.best["trial_id"])
    interval = "[{:.4f}, {:.4f}]".format(*report.test_acc_interval)
    marks = {
        tags.PARENT_RUN_ID: sweep.parent_run_id,
        tags.RETRAIN_RUN_ID: record.run_id,
        tags.TRIAL_ID: trial_id,
        tags.DATA_FINGERPRINT: split.fingerprint,
        tags.RETRAINED_EPOCHS: str(sweep.epochs),
        tags.trial_score(sweep.experiment.metric): f"{sweep.score:.6f}",
        tags.selection_score(sweep.experiment.metric): f"{selection.score:.6f}",
        tags.TEST_ACC: f"{report.test_acc:.6f}",
        tags.TEST_ACC_95: interval,
        tags.TEST_LOSS: f"{report.test_loss:.6f}",
        tags.TEST_MACRO_F1: f"{report.macro_f1:.6f}",
    }
    model_id = record.model_uri.removeprefix("models:/")
    with use_tracking_uri(tracking_uri):  # the registry resolves a models:/ source through it
        version = client.create_model_version(
            name,
            source=record.model_uri,
            run_id=record.run_id,
            tags=marks,
            model_id=model_id,
            description=f"Trial {trial_id} of sweep {sweep.run_name} (experiment "
            f"'{experiment}'), retrained for {sweep.epochs} epochs: test_acc "
            f"{report.test_acc:.4f} (95% interval {interval}) on {split.test.size} "
            f"held-out rows; {sweep.experiment.metric} {selection.score:.4f} when selected.",
        )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


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


def logged_test_acc(client: Client, name: str, version: str) -> float | None:
    """The test accuracy a version was registered with, if it was tagged with one."""
    logged = client.get_model_version(name, version).tags.get(tags.TEST_ACC)
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


def version_data(loaded: LoadedVersion, cache_dir: Path) -> tuple[Dataset, Split]:
    """The data set and split the version was trained with, loaded as they are today."""
    config = DataConfig.model_validate(loaded.metadata["data"])
    seed = int(loaded.metadata["seed"])
    dataset = load_dataset(config, seed, cache_dir)
    return dataset, split_dataset(dataset, config, seed)


def check_comparable(candidate: LoadedVersion, champion: LoadedVersion, name: str) -> None:
    """Refuse to compare models trained on different data sets (features or classes differ)."""
    for key in DATA_IDENTITY:
        if candidate.metadata.get(key) != champion.metadata.get(key):
            raise PipelineError(
                f"model '{name}': version {candidate.version} was trained on "
                f"{describe_data(candidate.metadata)}, the champion (version {champion.version}) "
                f"on {describe_data(champion.metadata)}; they cannot be compared ({key} differ)"
            )


def describe_data(metadata: dict[str, Any]) -> str:
    return (
        f"'{metadata.get('dataset')}' ({len(metadata.get('feature_names', []))} features, "
        f"{len(metadata.get('class_names', []))} classes)"
    )


def promote(
    client: Client,
    tracking_uri: str,
    name: str,
    cache_dir: Path,
    actor: str,
    version: int | None = None,
    force: bool = False,
    min_delta: float = 0.0,
) -> Decision:
    """Move `champion` to the challenger (or `version`) if it beats the champion on the test split.

    Both are re-scored on the candidate's test split. With no champion, the candidate becomes
    champion; `force` skips the comparison. The replaced champion becomes `previous-champion`.
    The decision is made and applied holding the model's aliases (see `holding_aliases`).
    """
    if min_delta < 0:
        raise PipelineError(f"min_delta must be >= 0, got {min_delta}")
    check_model(client, name)
    with holding_aliases(client, name):
        return decide_promotion(
            client, tracking_uri, name, cache_dir, actor, version, force, min_delta
        )


def decide_promotion(
    client: Client,
    tracking_uri: str,
    name: str,
    cache_dir: Path,
    actor: str,
    version: int | None,
    force: bool,
    min_delta: float,
) -> Decision:
    aliases = check_model(client, name)
    if version is None and CHALLENGER not in aliases:
        # Nothing new was registered since the last decision: not an error (a nightly schedule
        # meets this on every night that registered nothing).
        current = aliases.get(CHAMPION)
        return Decision(name, NOTHING, "", current, current, f"model '{name}' has no challenger")
    if version is None:
        candidate_version = aliased(aliases, name, CHALLENGER)
    else:
        candidate_version = check_version(client, name, version)
    champion_version = aliases.get(CHAMPION)
    if champion_version == candidate_version:
        raise PipelineError(f"model '{name}': version {candidate_version} is already the champion")
    candidate = load_version(tracking_uri, name, candidate_version)
    champion = load_version(tracking_uri, name, champion_version) if champion_version else None
    if champion is not None:
        check_comparable(candidate, champion, name)
    dataset, split = version_data(candidate, cache_dir)
    features, labels = dataset.features[split.test], dataset.labels[split.test]
    candidate_report = score(candidate.predict_probabilities(features), labels, dataset.class_names)
    champion_report = (
        score(champion.predict_probabilities(features), labels, dataset.class_names)
        if champion is not None
        else None
    )
    verdict = judge_promotion(candidate_report, champion_report, force, min_delta)
    reason = verdict.reason
    if split.fingerprint != candidate.metadata.get("data_fingerprint"):
        reason += "; the data changed since training, scores are on today's data"
    promoted = verdict.promoted
    if promoted:
        if champion_version:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion_version)
        client.set_registered_model_alias(name, CHAMPION, candidate_version)
        if aliases.get(CHALLENGER) == candidate_version:
            client.delete_registered_model_alias(name, CHALLENGER)
    decision = Decision(
        name,
        verdict.action,
        candidate_version,
        champion_version,
        candidate_version if promoted else champion_version,
        reason,
        candidate_report,
        champion_report,
    )
    record_decision(client, decision, actor, min_delta, split.fingerprint)
    return decision


def rollback(client: Client, name: str, actor: str) -> Decision:
    """Swap `champion` and `previous-champion`: the model in service before the last promotion."""
    check_model(client, name)
    with holding_aliases(client, name):
        return swap_back(client, name, actor)


def swap_back(client: Client, name: str, actor: str) -> Decision:
    aliases = check_model(client, name)
    champion = aliased(aliases, name, CHAMPION)
    previous = aliases.get(PREVIOUS_CHAMPION)
    if previous is None:
        raise PipelineError(f"model '{name}' has no previous champion to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion)
    decision = Decision(
        name, "rolled back", previous, champion, previous, f"version {champion} withdrawn"
    )
    record_decision(client, decision, actor)
    return decision


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


def record_decision(
    client: Client,
    decision: Decision,
    actor: str,
    min_delta: float | None = None,
    data_fingerprint: str | None = None,
) -> None:
    """Tag the version the decision was about: what, who, when, and the scores of both."""
    prefix = tags.ROLLBACK if decision.action == "rolled back" else tags.PROMOTION
    fields = {
        tags.DECISION: decision.action,
        tags.DECIDED_BY: actor,
        tags.DECIDED_AT: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tags.REASON: decision.reason,
        tags.CHAMPION_BEFORE: decision.champion_before or "none",
    }
    if min_delta is not None:
        fields[tags.MIN_DELTA] = str(min_delta)
    if data_fingerprint is not None:
        fields[tags.DATA_FINGERPRINT] = data_fingerprint
    for role, report in zip(
        tags.GATE_ROLES, (decision.candidate_report, decision.champion_report), strict=True
    ):
        if report is not None:
            fields[tags.gate_score(role, tags.TEST_ACC)] = f"{report.test_acc:.6f}"
            fields[tags.gate_score(role, tags.TEST_LOSS)] = f"{report.test_loss:.6f}"
    for key, value in fields.items():
        client.set_model_version_tag(decision.model, decision.candidate, prefix + key, value)
