"""Which hyperparameters matter: a random forest fitted to the valid trials' scores, and how much
its fit drops when each hyperparameter's values are shuffled."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.report.sweep import SweepData

MIN_IMPORTANCE_TRIALS = 4  # below this a forest fitted to the trials says nothing
IMPORTANCE_REPEATS = 20  # shuffles per hyperparameter in the permutation test


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


def importances(data: SweepData) -> pd.DataFrame | str:
    """Permutation importance of each hyperparameter for a random forest fitted to the valid
    trials' scores (scikit-learn's, seeded), most important first; or why there is none."""
    from sklearn.ensemble import RandomForestRegressor

    valid = data.trials[data.trials["valid"]]
    if len(valid) < MIN_IMPORTANCE_TRIALS:
        return (
            f"too few trials: {len(valid)} valid trial(s), at least {MIN_IMPORTANCE_TRIALS} "
            "are needed to estimate importance"
        )
    features = encoded(data, valid)
    features = features.loc[:, features.nunique(dropna=False) > 1]  # a constant explains nothing
    scores = valid[data.metric].astype(float)
    if features.empty or scores.nunique() < 2:
        return "every valid trial scored the same or sampled the same values: nothing to explain"
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
    valid = int(data.trials["valid"].sum())
    return (
        f"A random forest fitted to {valid} valid trials; each bar is how much its fit (R²) "
        f"drops when that hyperparameter's values are shuffled ({IMPORTANCE_REPEATS} shuffles, "
        "line: their spread). With few trials, read it as a hint, not a measurement."
    )
