"""The model registry on a real SQLite MLflow store: versions of logged models whose files lie
in the store's artifact folder, pruned as a night prunes them (`nightly --keep`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from pipeline.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    model_aliases,
    prune_versions,
)
from pipeline.tracking.store import ensure_experiment, open_client, use_tracking_uri

MODEL = "pruned"


def register_logged_model(client: MlflowClient, uri: str, experiment_id: str) -> tuple[str, Path]:
    """A new version of MODEL from a logged model with a file of its own: the version and
    the logged model's folder."""
    logged = client.create_logged_model(experiment_id, name="model")
    folder = Path(urlparse(logged.artifact_location).path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(f"model_id: {logged.model_id}\n")
    with use_tracking_uri(uri):  # the registry resolves a models:/ source through it
        version = client.create_model_version(
            MODEL, source=f"models:/{logged.model_id}", model_id=logged.model_id
        )
    return str(version.version), folder


def test_pruning_to_one_version_keeps_every_aliased_version_and_its_files(
    tmp_path: Path,
) -> None:
    """`--keep 1` over five versions, three of them aliased (champion, previous champion,
    challenger): those three and their models' files stay, whatever the count; the two others
    go, their files with them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    experiment_id = ensure_experiment(client, "night", tmp_path / "artifacts")
    client.create_registered_model(MODEL)
    folders = dict(register_logged_model(client, uri, experiment_id) for _ in range(5))
    aliases = {PREVIOUS_CHAMPION: "2", CHAMPION: "3", CHALLENGER: "5"}
    for alias, version in aliases.items():
        client.set_registered_model_alias(MODEL, alias, version)

    deleted = prune_versions(client, uri, MODEL, keep=1)

    assert deleted == ["1", "4"]
    left = sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    assert left == ["2", "3", "5"]
    assert model_aliases(client, MODEL) == aliases
    for version, folder in folders.items():
        assert (folder / "MLmodel").exists() == (version in left), version


def test_versions_from_before_loaders_are_compared_by_what_they_imply() -> None:
    """A version registered before loaders and input shapes were recorded shares its test split
    with a new one of the same source and shape, and not with one of another shape."""
    from pipeline.tracking.promotion import data_identity

    old = {
        "dataset": "digits",
        "feature_names": [f"pixel_{i}" for i in range(64)],
        "class_names": [str(d) for d in range(10)],
        "image_shape": [1, 8, 8],
        "data": {"source": "digits"},
    }
    new = {
        **{k: v for k, v in old.items() if k != "image_shape"},
        "loader": "source:digits",
        "input_shape": [1, 8, 8],
    }
    assert data_identity(old) == data_identity(new)
    assert data_identity({**old, "image_shape": None})["input_shape"] == [64]
    assert data_identity({**new, "input_shape": [64]}) != data_identity(new)
