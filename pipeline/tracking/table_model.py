"""A registered table model as MLflow loads it ("models from code": this file is logged with the
model and run on loading; nothing is pickled). It takes the table as the user has it, strings and
gaps included, encodes it with the columns it was trained on (`table_encoding`, shipped with the
model) and runs the exported network on the result: class probabilities, or a regression's
predictions in the target's units. It needs torch, pandas and MLflow, not the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

try:  # as the loaded model finds it: shipped next to this file (MLflow's code_paths)
    from table_encoding import encode_frame  # type: ignore[import-not-found]
except ImportError:  # as the pipeline logs it
    from pipeline.core.table_encoding import encode_frame

PROGRAM, COLUMNS = "program", "columns"  # the model's artifacts: the network, the column spec


class TableModel(PythonModel):
    """Raw table rows in; the network's outputs for them out."""

    def load_context(self, context: PythonModelContext) -> None:
        spec = json.loads(Path(context.artifacts[COLUMNS]).read_text())
        self.columns: list[dict[str, Any]] = spec["columns"]
        self.imputes = bool(spec["imputes"])
        with Path(context.artifacts[PROGRAM]).open("rb") as stream:
            self.network = torch.export.load(stream).module()

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        frame = pd.DataFrame(model_input)
        try:
            rows = encode_frame(frame, self.columns)
        except ValueError as exc:  # a missing column, text in a number column: HTTP 400
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        gaps = np.isnan(rows)
        if gaps.any() and not self.imputes:
            first = int(np.flatnonzero(gaps.any(axis=1))[0])
            raise MlflowException.invalid_parameter_value(
                f"{int(gaps.sum())} values are missing (first in row {first}); this model was "
                "trained without gaps (data.missing: refuse or drop), so every value is needed"
            )
        with torch.no_grad():
            outputs: np.ndarray = self.network(torch.from_numpy(rows)).numpy()
        return outputs


set_model(TableModel())
