"""The registered models at work: promote, roll back, predict, export the test rows a version
was scored on, and serve. Nothing here needs Ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.metrics import bare_name
from pipeline.core.predict import (
    held_out_rows,
    labelled_score,
    predictions_frame,
    read_inputs,
    write_csv,
)
from pipeline.settings import Settings
from pipeline.tracking import promotion, registry
from pipeline.tracking.preflight import check_tracking_store
from pipeline.tracking.promotion import Decision
from pipeline.tracking.registry import CHAMPION
from pipeline.tracking.server import Launch, model_server_launch, ui_launch
from pipeline.tracking.store import (
    Client,
    make_local_store,
    open_client,
)


def promote(
    settings: Settings,
    model: str,
    actor: str,
    *,
    version: int | None = None,
    force: bool = False,
    min_delta: float = 0.0,
) -> Decision:
    """Make the challenger (or `version`) champion if it beats the champion on the test split."""
    client = open_client(settings.tracking_uri, patience=settings.outage_timeout)
    return promotion.promote(
        client,
        settings.tracking_uri,
        model,
        cache_dir=settings.data_dir,
        actor=actor,
        version=version,
        force=force,
        min_delta=min_delta,
    )


def rollback(settings: Settings, model: str, actor: str) -> Decision:
    """Give `champion` back to the previous champion."""
    client = open_client(settings.tracking_uri, patience=settings.outage_timeout)
    return promotion.rollback(client, model, actor)


def chosen_version(client: Client, model: str, alias: str, version: int | None) -> str:
    """The version asked for by number, else the one the alias points at."""
    if version:
        return registry.check_version(client, model, version)
    return registry.version_by_alias(client, model, alias)


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """What `predict` wrote, and how well it did where the input had labels."""

    model: str
    version: str
    rows: int
    output: Path
    # Where the input had a `label` column: the sweep's metric's score on it (`test_acc`,
    # `test_rmse`, ...: its name, its value) and the version's test score when registered.
    labelled: tuple[str, float] | None
    logged: float | None


def predict(
    settings: Settings,
    model: str,
    input_path: Path,
    output: Path,
    *,
    alias: str = CHAMPION,
    version: int | None = None,
) -> Prediction:
    """Predict the input's rows (labels and class probabilities, or values in the target's
    units); write them as CSV."""
    client = open_client(settings.tracking_uri)
    chosen = chosen_version(client, model, alias, version)
    loaded = registry.load_version(settings.tracking_uri, model, chosen)
    inputs = read_inputs(input_path, loaded.metadata)
    outputs = loaded.predict_outputs(inputs.features)
    frame = predictions_frame(outputs, loaded.metadata["class_names"], inputs)
    write_csv(frame, output)
    labelled = labelled_score(outputs, loaded.metadata, inputs)
    logged = None
    if labelled is not None:
        logged = registry.logged_test_score(client, model, chosen, bare_name(labelled[0]))
    return Prediction(
        model=model,
        version=chosen,
        rows=len(frame),
        output=output,
        labelled=labelled,
        logged=logged,
    )


@dataclass(frozen=True)
class ExportedRows:
    rows: int
    dataset: str
    output: Path


def export_test_rows(settings: Settings, model: str, output: Path, alias: str) -> ExportedRows:
    """Write the held-out test rows a version was scored on (features and label) as CSV."""
    client = open_client(settings.tracking_uri)
    chosen = registry.version_by_alias(client, model, alias)
    loaded = registry.load_version(settings.tracking_uri, model, chosen)
    dataset, split = promotion.version_data(loaded, settings.data_dir)
    write_csv(held_out_rows(dataset, split), output)
    return ExportedRows(len(split.test), dataset.name, output)


def serve(settings: Settings, model: str, alias: str, *, host: str, port: int) -> Launch:
    """The model server for the version the alias points at now."""
    chosen = registry.version_by_alias(open_client(settings.tracking_uri), model, alias)
    return model_server_launch(settings.tracking_uri, model, chosen, alias, host=host, port=port)


def ui(settings: Settings, port: int) -> Launch:
    """The MLflow UI over the local store, or where the tracking server (which must answer) is."""
    check_tracking_store(settings.tracking_uri)
    make_local_store(settings.tracking_uri)
    return ui_launch(settings.tracking_uri, port)
