"""Promotion and rollback: the challenger (or a chosen version) becomes `champion` only when it
beats the champion on the same test split, rebuilt from the candidate's recorded data settings;
numbers logged earlier are never trusted, since the data may have changed since. Every decision
is recorded on the version it was about."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import tags
from pipeline.config import DataConfig
from pipeline.core.data import Dataset, Split
from pipeline.core.decisions import judge_promotion
from pipeline.core.evaluate import TestReport, score
from pipeline.core.predict import Scoring
from pipeline.core.sources import load_split
from pipeline.errors import PipelineError
from pipeline.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    LoadedVersion,
    aliased,
    check_model,
    check_version,
    holding_aliases,
    load_version,
)
from pipeline.tracking.store import Client

NOTHING = "nothing to promote"  # the action when there is no challenger
# What must match for two models to be compared on one test split.
DATA_IDENTITY = ("dataset", "task", "loader", "input_shape", "feature_names", "class_names")


@dataclass(frozen=True, kw_only=True)
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


def version_data(loaded: LoadedVersion, cache_dir: Path) -> tuple[Dataset, Split]:
    """The data set and split the version was trained with, loaded as they are today."""
    config = DataConfig.model_validate(loaded.metadata["data"])
    paths = loaded.metadata.get("code_paths") or []
    task = Scoring.of(loaded.metadata).task
    return load_split(config, int(loaded.metadata["seed"]), cache_dir, code_paths=paths, task=task)


def check_comparable(candidate: LoadedVersion, champion: LoadedVersion, name: str) -> None:
    """Refuse to compare models trained on different data sets (features or classes differ)."""
    ours, theirs = data_identity(candidate.metadata), data_identity(champion.metadata)
    for key in DATA_IDENTITY:
        if ours[key] != theirs[key]:
            raise PipelineError(
                f"model '{name}': version {candidate.version} was trained on "
                f"{describe_data(candidate.metadata)}, the champion (version {champion.version}) "
                f"on {describe_data(champion.metadata)}; they cannot be compared ({key} differ: "
                f"{ours[key]} and {theirs[key]})"
            )


def data_identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """What must match for two versions to share a test split, read from a version's metadata;
    versions registered before loaders and input shapes were recorded get what they imply."""
    features = metadata.get("feature_names", [])
    source = (metadata.get("data") or {}).get("source")
    implied = {
        "task": "classification",
        "loader": f"source:{source}",
        "input_shape": metadata.get("image_shape") or [len(features)],
    }
    return {key: metadata.get(key, implied.get(key)) for key in DATA_IDENTITY}


def describe_data(metadata: dict[str, Any]) -> str:
    return (
        f"'{metadata.get('dataset')}' ({len(metadata.get('feature_names', []))} features, "
        f"{len(metadata.get('class_names', []))} classes)"
    )


def promote(
    client: Client,
    tracking_uri: str,
    name: str,
    *,
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
            client,
            tracking_uri,
            name,
            cache_dir=cache_dir,
            actor=actor,
            version=version,
            force=force,
            min_delta=min_delta,
        )


def decide_promotion(
    client: Client,
    tracking_uri: str,
    name: str,
    *,
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
        return Decision(
            model=name,
            action=NOTHING,
            candidate="",
            champion_before=current,
            champion_after=current,
            reason=f"model '{name}' has no challenger",
        )
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
    features, targets = dataset.model_inputs(split.test), dataset.labels[split.test]

    scoring = Scoring.of(candidate.metadata)

    def test(version: LoadedVersion) -> TestReport:
        """The version's scores on the test rows, on the candidate's metric."""
        outputs = version.predict_outputs(features)
        return score(
            outputs,
            targets,
            task=scoring.task,
            metric=scoring.metric,
            class_names=dataset.class_names,
            user=scoring.user,
            mode=scoring.mode,
        )

    candidate_report = test(candidate)
    champion_report = test(champion) if champion is not None else None
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
        model=name,
        action=verdict.action,
        candidate=candidate_version,
        champion_before=champion_version,
        champion_after=candidate_version if promoted else champion_version,
        reason=reason,
        candidate_report=candidate_report,
        champion_report=champion_report,
    )
    record_decision(
        client, decision, actor, min_delta=min_delta, data_fingerprint=split.fingerprint
    )
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
        model=name,
        action="rolled back",
        candidate=previous,
        champion_before=champion,
        champion_after=previous,
        reason=f"version {champion} withdrawn",
    )
    record_decision(client, decision, actor)
    return decision


def record_decision(
    client: Client,
    decision: Decision,
    actor: str,
    *,
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
            for name in {report.metric, "loss"}:
                fields[tags.gate_score(role, tags.test_score(name))] = f"{report.scores[name]:.6f}"
    for key, value in fields.items():
        client.set_model_version_tag(decision.model, decision.candidate, prefix + key, value)
