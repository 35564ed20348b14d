"""The model server: MLflow's scoring server (FastAPI, /invocations, /ping, /health) over one
registered version, with its inputs checked first: rows holding NaN, infinite or out-of-range
values are answered with HTTP 400 and a message naming them, not with NaN probabilities.

Run by `python -m pipeline serve` as `uvicorn pipeline.tracking.scoring:app`; the version to
serve comes in PIPELINE_SERVE_MODEL_URI (uvicorn imports the app, it cannot be handed one).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel, load_model, scoring_server

from pipeline.core.sources import FLOAT32_MAX
from pipeline.tracking.server import MODEL_URI_VARIABLE


class FiniteInputs:
    """A pyfunc model whose `predict` refuses values the network cannot take (MLflow answers
    an MlflowException of INVALID_PARAMETER_VALUE with HTTP 400)."""

    def __init__(self, model: PyFuncModel) -> None:
        self.model = model
        self.metadata = model.metadata
        # A table model takes text and gaps, and checks its rows itself (`table_model`).
        self.table = bool((model.metadata.metadata or {}).get("table"))

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if not self.table:
            check_finite(data)
        return self.model.predict(data, params=params)


def check_finite(data: Any) -> None:
    """Raise INVALID_PARAMETER_VALUE when `data` holds NaN, infinite or out-of-range values."""
    frame = data if isinstance(data, pd.DataFrame) else None
    try:
        values = (
            frame.to_numpy(dtype=np.float64) if frame is not None else np.asarray(data, np.float64)
        )
    except (TypeError, ValueError):
        return  # not numbers: the model's signature check answers that
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1)) if values.ndim else [0]
        raise MlflowException.invalid_parameter_value(
            f"{int(bad.sum())} input values are NaN, infinite or beyond float32's range (rows "
            f"{', '.join(str(int(r)) for r in rows[:5])}{', ...' if len(rows) > 5 else ''}); "
            "the model needs finite numbers"
        )


def make_app() -> Any:
    """The FastAPI app serving the version named in PIPELINE_SERVE_MODEL_URI."""
    model = load_model(os.environ[MODEL_URI_VARIABLE], suppress_warnings=True)
    return scoring_server.init(FiniteInputs(model))  # type: ignore[arg-type]
