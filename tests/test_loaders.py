"""The loader door: what a loader returns made a data set (arrays in memory, or a map-style
Dataset read on demand), and the image folder read on demand trains exactly as the same pixels
held in memory."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig, Hyperparameters
from pipeline.core.data import Dataset, split_dataset, tuning_data
from pipeline.core.loaders import encode_labels, load_with
from pipeline.core.networks import mlp
from pipeline.core.sources import load_dataset
from pipeline.core.train import EpochMetrics, fit
from pipeline.errors import PipelineError
from tests.conftest import REPO

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits as PNG files, written by the example's own script."""
    folder = tmp_path_factory.mktemp("images") / "digits"
    script = REPO / "examples" / "digit_images" / "prepare.py"
    subprocess.run([sys.executable, str(script), str(folder)], check=True)
    return folder


def train(dataset: Dataset, config: DataConfig) -> list[EpochMetrics]:
    split = split_dataset(dataset, config, seed=0)
    data = tuning_data(dataset, split, shared_scale=config.shared_scale)
    history: list[EpochMetrics] = []
    hp = Hyperparameters.from_params({"lr": 3e-3, "batch_size": 64, "hidden_units": 32})
    fit(
        mlp,
        hp,
        data,
        max_epochs=3,
        report=lambda m, _: history.append(m),
        device=CPU,
        seed=0,
    )
    return history


def test_an_image_folder_read_on_demand_trains_as_its_pixels_in_memory(
    image_folder: Path,
) -> None:
    config = DataConfig(source="image_folder", path=str(image_folder))
    lazy = load_dataset(config, 0, Path("/nonexistent"), task="classification")
    assert lazy.features is None and lazy.examples is not None
    assert lazy.input_shape == (1, 8, 8) and len(lazy.labels) == 1797
    assert lazy.class_names == tuple(str(d) for d in range(10))
    pixels = lazy.rows(np.arange(len(lazy.labels)))
    assert pixels.shape == (1797, 64) and pixels.max() == 255.0
    in_memory = replace(lazy, features=pixels, examples=None)
    # The same examples: the same split, the same fingerprint of it...
    assert split_dataset(lazy, config, 0).fingerprint != ""
    # ...and the same training, batch for batch (the scaling sample covers every tuning row).
    ours, theirs = train(lazy, config), train(in_memory, config)
    assert [m.scores["val_acc"] for m in ours] == pytest.approx(
        [m.scores["val_acc"] for m in theirs], abs=1e-6
    )
    assert [m.train_loss for m in ours] == pytest.approx([m.train_loss for m in theirs], rel=1e-5)
    assert ours[-1].scores["val_acc"] > 0.8


def test_an_image_folder_at_another_size_in_colour(image_folder: Path) -> None:
    config = DataConfig(
        source="image_folder", path=str(image_folder), image_size=(4, 6), channels=3
    )
    dataset = load_dataset(config, 0, Path("/nonexistent"), task="classification")
    assert dataset.input_shape == (3, 4, 6)
    assert dataset.rows(np.arange(3)).shape == (3, 72)


class Pairs(torch.utils.data.Dataset[Any]):
    """A user's Dataset of (features, label) items."""

    def __init__(self, count: int) -> None:
        self.x = torch.randn(count, 2, 5, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], index % 2


def pairs(count: int = 40) -> dict[str, Any]:
    return {"features": Pairs(count), "labels": ["odd" if i % 2 else "even" for i in range(count)]}


def test_a_loader_returning_a_dataset_of_pairs_is_read_on_demand() -> None:
    dataset = load_with(f"{__name__}:pairs", {"count": 40}, name="pairs")
    assert dataset.features is None and dataset.input_shape == (2, 5)
    assert dataset.class_names == ("even", "odd") and list(dataset.labels[:3]) == [0, 1, 0]
    assert dataset.rows(np.array([3])) == pytest.approx(Pairs(40).x[3].reshape(1, -1).numpy())
    assert dataset.examples is not None and len(dataset.examples.content_hash) == 16


def test_labels_are_classes_in_the_order_given() -> None:
    labels, names = encode_labels(["b", "c", "b"], ["c", "b"], "x:y")
    assert names == ("c", "b") and list(labels) == [1, 0, 1]
    labels, names = encode_labels(np.array([2, 0, 2]), ["zero", "one", "two"], "x:y")
    assert names == ("zero", "two") and list(labels) == [1, 0, 1]
    with pytest.raises(PipelineError, match="label 'd' is not among class_names"):
        encode_labels(["d"], ["c", "b"], "x:y")
    with pytest.raises(PipelineError, match="fractional or non-finite"):
        encode_labels(np.array([0.5, 1.0]), None, "x:y")
