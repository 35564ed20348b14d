"""A table's raw rows as the float rows a network takes, by a JSON-able column spec: a number
column as its values (a gap: NaN), a category column as the code of each value in the column's
vocabulary (a value the vocabulary lacks: the unknown code, its length; a gap: NaN).

A registered table model ships this file with it (MLflow's `code_paths`), so that `predict` and
`serve` take the table as the user has it, strings and gaps included, with nothing of the
pipeline installed: it imports numpy and pandas only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

NUMBER, CATEGORY = "number", "category"


def category_text(values: pd.Series) -> pd.Series:
    """A category column's values as text, gaps kept as gaps (NaN): 3, 3.0 and "3" are one
    value."""
    return values.astype(object).map(canonical_text)


def canonical_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def missing_columns(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    """`missing columns a, b` naming the columns of `names` the frame lacks, if any."""
    missing = [name for name in names if name not in frame.columns]
    if not missing:
        return None
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"missing columns {', '.join(missing[:5])}{more}"


def encode_frame(frame: pd.DataFrame, columns: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The rows of `frame` as float32 rows, one value per spec column, in the spec's order
    (extra columns of the frame ignored).

    Raises ValueError naming the columns the frame lacks, or a number column's value that is
    not a number.
    """
    absent = missing_columns(frame, [str(c["name"]) for c in columns])
    if absent:
        raise ValueError(absent)
    encoded = np.empty((len(frame), len(columns)), np.float32)
    for i, column in enumerate(columns):
        values = frame[column["name"]]
        if column["kind"] == NUMBER:
            numbers = pd.to_numeric(values, errors="coerce")
            bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
            if bad.any():
                example = values[bad].iloc[0]
                raise ValueError(f"column '{column['name']}' holds {example!r}, not a number")
            encoded[:, i] = numbers.to_numpy(np.float64)
            continue
        codes = {value: code for code, value in enumerate(column["categories"])}
        unknown = len(codes)
        text = category_text(values)
        encoded[:, i] = [np.nan if pd.isna(v) else codes.get(v, unknown) for v in text]
    return encoded
