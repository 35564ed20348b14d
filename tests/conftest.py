"""Shared fixtures: the real shipped search spaces and the bundled digits data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import DataConfig
from pipeline.data import Dataset, Split, TuningData, load_dataset, split_dataset, tuning_data

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset(DataConfig(source="digits"), seed=0, cache_dir=Path("/nonexistent"))


@pytest.fixture(scope="session")
def digits_split(digits: Dataset) -> Split:
    return split_dataset(digits, DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="session")
def digits_tuning(digits: Dataset, digits_split: Split) -> TuningData:
    return tuning_data(digits, digits_split)


def run_cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` in `cwd`: its default local store, whatever the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
