"""A loader for an imbalanced set: scikit-learn's bundled Wisconsin breast-cancer biopsies (569
real ones), with all the benign and a seeded sample of the malignant kept, so that malignant
tumours are rare, as they are among screened patients. No import of the pipeline."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer


def load(malignant_share: float = 0.08, seed: int = 0) -> dict[str, object]:
    """Features, labels and names; malignant tumours about `malignant_share` of the rows."""
    bunch = load_breast_cancer()
    malignant = np.flatnonzero(bunch.target == 0)
    benign = np.flatnonzero(bunch.target == 1)
    kept = round(malignant_share / (1 - malignant_share) * len(benign))
    chosen = np.random.default_rng(seed).choice(malignant, size=kept, replace=False)
    rows = np.sort(np.concatenate([benign, chosen]))
    return {
        "features": bunch.data[rows].astype(np.float32),
        "labels": np.where(bunch.target[rows] == 0, "malignant", "benign"),
        "class_names": ["benign", "malignant"],
        "feature_names": [str(name) for name in bunch.feature_names],
    }
