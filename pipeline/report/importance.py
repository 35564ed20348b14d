"""Which hyperparameters matter: a random forest fitted to the scores of the trials that trained,
and how much its fit drops when each hyperparameter's values are shuffled; and, apart, what the
trials that broke (`emphasis.broke`) had in common."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.report.emphasis import broke, ranked_values
from pipeline.report.sweep import SweepData

MIN_IMPORTANCE_TRIALS = 4  # below this a forest fitted to the trials says nothing
IMPORTANCE_REPEATS = 20  # shuffles per hyperparameter in the permutation test
BROKE_SHARE = 0.75  # a value is said to break training when this share of its trials broke


def encoded(data: SweepData, valid: pd.DataFrame) -> pd.DataFrame:
    """The hyperparameters as numbers for a forest: categories as codes, log-scaled ones as
    log10; missing (a parameter of another optimizer) stays NaN, which the forest handles."""
    columns = {}
    for name in data.params:
        values = valid[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.astype(float)
            columns[name] = (
                np.log10(numbers)
                if name in data.log_params and (numbers.dropna() > 0).all()
                else numbers
            )
        else:
            codes = pd.Categorical(values.astype("string")).codes.astype(float)
            columns[name] = pd.Series(np.where(codes < 0, np.nan, codes), index=values.index)
    return pd.DataFrame(columns, index=valid.index)


def trained(data: SweepData) -> pd.DataFrame:
    """The valid trials that trained: all but those that broke (`emphasis.broke`)."""
    valid = data.trials[data.trials["valid"]]
    return valid[~valid["trial_id"].astype(str).isin(broke(data))]


def importances(data: SweepData) -> pd.DataFrame | str:
    """Permutation importance of each hyperparameter for a random forest fitted to the scores
    of the trials that trained (as `emphasis.ranked_values` has them: decades of error, where
    0.99 and 0.999 differ as much as 0.9 and 0.99), scikit-learn's, seeded; most important
    first; or why there is none. Trials that broke would make it answer "what breaks
    training" instead of "what to narrow next" (`what_breaks` answers that)."""
    from sklearn.ensemble import RandomForestRegressor

    valid = trained(data)
    if len(valid) < MIN_IMPORTANCE_TRIALS:
        return (
            f"Too few trials: {len(valid)} trial(s) trained, at least {MIN_IMPORTANCE_TRIALS} "
            "are needed to estimate importance."
        )
    features = encoded(data, valid)
    features = features.loc[:, features.nunique(dropna=False) > 1]  # a constant explains nothing
    scores = ranked_values(data, valid).astype(float)
    if features.empty or scores.nunique() < 2:
        return (
            "Every trial that trained scored the same or sampled the same values: nothing to "
            "explain."
        )
    forest = RandomForestRegressor(n_estimators=200, random_state=data.seed, min_samples_leaf=1)
    forest.fit(features.to_numpy(), scores.to_numpy())
    drops = permutation_drops(
        forest.predict,
        features.to_numpy(),
        scores.to_numpy(),
        repeats=IMPORTANCE_REPEATS,
        seed=data.seed,
    )
    table = pd.DataFrame(
        {"importance": drops.mean(axis=1), "std": drops.std(axis=1)}, index=features.columns
    )
    return table.sort_values("importance", ascending=False)


def permutation_drops(
    predict: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    targets: np.ndarray,
    *,
    repeats: int,
    seed: int,
) -> np.ndarray:
    """How much the fit (R²) of `predict` drops when one column's values are shuffled: an array
    of columns x `repeats` shuffles. scikit-learn's `permutation_importance` computes the same,
    but predicts each shuffled copy in a call of its own (a forest of 200 trees then took 5 s
    for a 40-trial sweep); here every copy goes in one call."""
    rng = np.random.default_rng(seed)
    rows, columns = features.shape
    copies = np.repeat(features[np.newaxis], columns * repeats, axis=0)
    for column in range(columns):
        for repeat in range(repeats):
            copies[column * repeats + repeat, :, column] = rng.permutation(features[:, column])
    predicted = predict(copies.reshape(-1, columns)).reshape(columns, repeats, rows)
    spread = float(((targets - targets.mean()) ** 2).sum())

    def r2(values: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 - ((values - targets) ** 2).sum(axis=-1) / spread)

    return np.asarray(r2(predict(features)) - r2(predicted))


def importance_note(data: SweepData) -> str:
    count = len(trained(data))
    return (
        f"A random forest fitted to the {count} trials that trained; each bar is how much its "
        f"fit (R²) drops when that hyperparameter's values are shuffled ({IMPORTANCE_REPEATS} "
        "shuffles, line: their spread). With few trials, read it as a hint, not a measurement."
    )


def what_breaks(data: SweepData) -> list[str]:
    """What the trials that broke had in common, a line each: a value most of the trials that
    took it broke with, or a range of a number outside every trained trial's."""
    broken = broke(data)
    if not broken:
        return []
    valid = data.trials[data.trials["valid"]]
    failed = valid["trial_id"].astype(str).isin(broken)
    lines = []
    for name in data.params:
        values = valid[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            bad, good = values[failed].dropna(), values[~failed].dropna()
            if len(bad) and len(good) and bad.min() > good.max():
                lines.append(f"{name} above {good.max():.3g}: {len(bad)} broke, none trained")
            elif len(bad) and len(good) and bad.max() < good.min():
                lines.append(f"{name} below {good.min():.3g}: {len(bad)} broke, none trained")
            continue
        for value, group in failed.groupby(values.astype("string")):
            if group.sum() >= 2 and group.mean() >= BROKE_SHARE:
                lines.append(f"{name}={value}: {int(group.sum())} of {len(group)} trials broke")
    return lines
