"""A loader as a team would write one for its own file: read it, pick the label column, drop
identifiers, return features, labels and their names. No import of the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# Relative paths are relative to the example's folder, wherever the command runs.
HERE = Path(__file__).resolve().parents[2]


def load(
    path: str = "data/wines.tsv",
    label: str = "cultivar",
    drop: tuple[str, ...] = ("bottle_id",),
    limit: int | None = None,
) -> dict[str, object]:
    """The rows of a tab-separated file: every column but `label` and `drop` is a feature.

    Returns the mapping the pipeline takes: `features` shaped (rows, columns), `labels` (here
    the cultivar's name, a string), and the names of the classes and features.
    """
    frame = pd.read_csv(HERE / path, sep="\t")
    if limit is not None:
        frame = frame.head(limit)
    labels = frame.pop(label).to_numpy()
    features = frame.drop(columns=list(drop))
    return {
        "features": features.to_numpy(np.float32),
        "labels": labels,
        # The order the report and predictions list the classes in (else: sorted).
        "class_names": ["barolo", "grignolino", "barbera"],
        "feature_names": list(features.columns),
    }
