"""Real tables: text columns encoded inside the model (one-hot or embedded), a value training
never saw mapped to nothing rather than failing, gaps refused, dropped or filled from each
model's own training rows, identifiers and broken columns refused in one line, and the model
exported whole, so that it takes the table as the user has it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import DataConfig, Hyperparameters
from pipeline.core.data import fit_table, split_dataset, tuning_data
from pipeline.core.model import build_network, export_network, load_exported, servable
from pipeline.core.networks import mlp
from pipeline.core.sources import load_dataset
from pipeline.core.table_encoding import encode_frame
from pipeline.core.train import fit
from pipeline.errors import PipelineError

CPU = torch.device("cpu")
ROWS = 300


def prices(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A price from a number and three text columns (4, 3 and 40 values), with an id."""
    rng = np.random.default_rng(seed)
    city = rng.choice(["paris", "lyon", "nice", "lille"], rows)
    size = rng.choice(["S", "M", "L"], rows)
    shop = rng.choice([f"shop{i:02d}" for i in range(40)], rows)
    x = rng.normal(size=rows)
    by_size = pd.Series(size).map({"S": 0.0, "M": 2.0, "L": 4.0}).to_numpy()
    price = 10 + 3 * x + np.where(city == "paris", 5.0, 0.0) + by_size + rng.normal(0, 0.5, rows)
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(rows)], "x": x, "city": city, "size": size, "shop": shop,
         "price": price}
    )  # fmt: skip


def config(path: Path, **settings: Any) -> DataConfig:
    raw = {"source": "csv", "path": str(path), "target": "price", "drop_columns": ["id"]}
    return DataConfig.model_validate({**raw, **settings})


def write(frame: pd.DataFrame, tmp_path: Path, name: str = "prices.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    return path


def test_text_columns_become_categories_one_hot_or_embedded(tmp_path: Path) -> None:
    dataset = load_dataset(
        config(write(prices(), tmp_path), one_hot_max=8), 0, Path(), task="regression"
    )
    assert dataset.table is not None and dataset.feature_names == ("x", "city", "size", "shop")
    city = dataset.table.columns[1]
    assert city.categories == ("lille", "lyon", "nice", "paris")
    # x: 1 input; city 4 and size 3, one-hot; shop's 40 values embedded in 1.6 * 40^0.56 = 13.
    assert dataset.spec.input_shape == (1 + 4 + 3 + 13,)
    raw = dataset.model_inputs(np.arange(2))
    assert isinstance(raw, pd.DataFrame) and list(raw.columns) == ["x", "city", "size", "shop"]
    assert dataset.features is not None
    assert dataset.features[0, 1] == city.categories.index(raw["city"][0])


def test_a_parquet_file_reads_as_its_csv(tmp_path: Path) -> None:
    frame = prices()
    from_csv = load_dataset(config(write(frame, tmp_path)), 0, Path(), task="regression")
    parquet = config(write(frame, tmp_path, "prices.parquet")).model_copy(
        update={"source": "parquet"}
    )
    from_parquet = load_dataset(parquet, 0, Path(), task="regression")
    np.testing.assert_array_equal(from_csv.features, from_parquet.features)
    assert from_csv.table == from_parquet.table


def test_a_table_regression_learns_through_its_categories(tmp_path: Path) -> None:
    dataset = load_dataset(config(write(prices(600), tmp_path)), 0, Path(), task="regression")
    settings = config(tmp_path / "prices.csv", cv_folds=3)
    split = split_dataset(dataset, settings, seed=0)
    data = tuning_data(dataset, split, shared_scale=False)
    history: list[dict[str, float]] = []
    hp = Hyperparameters.from_params({"lr": 1e-2, "batch_size": 32, "hidden_units": 32})
    fit(
        mlp,
        hp,
        data,
        max_epochs=25,
        report=lambda m, _: history.append(m.scores),
        device=CPU,
        seed=0,
    )
    # The price moves 5 with the city and 4 with the size: without them R² would be about 0.5.
    assert history[-1]["val_r2"] > 0.9 and history[-1]["val_rmse"] < 1.5


def test_unseen_and_untrained_values_encode_to_zeros_and_gaps_to_the_training_fill() -> None:
    frame = prices(60)
    layout_source = frame.drop(columns=["id", "price"])
    from pipeline.core.data import TableColumn, TableLayout

    layout = TableLayout(
        columns=(
            TableColumn("x"),
            TableColumn("city", ("lille", "lyon", "nice", "paris")),
            TableColumn("size", ("L", "M", "S")),
        ),
        one_hot_max=8,
        imputes=True,
    )
    spec = [c.spec() for c in layout.columns]
    rows = encode_frame(layout_source, spec)
    training = rows[rows[:, 1] != 0]  # no lille among the model's training rows
    fit_ = fit_table(training, layout)
    assert not fit_.seen[0][0] and fit_.seen[0][1:].all()
    from pipeline.core.model import TableInputs

    inputs = TableInputs(layout, fit_)
    odd = pd.DataFrame({"x": [np.nan, 1.0], "city": ["marseille", "lille"], "size": [None, "S"]})
    encoded = inputs(torch.from_numpy(encode_frame(odd, spec)))
    assert encoded.shape == (2, 1 + 4 + 3)
    # A gap: the training rows' median, standardized; marseille (unknown) and lille (absent from
    # training) move nothing; a missing size is the most frequent size of the training rows.
    median = (np.median(training[:, 0]) - fit_.mean[0]) / fit_.std[0]
    assert float(encoded[0, 0]) == pytest.approx(median, abs=1e-5)
    assert encoded[0, 1:5].tolist() == [0, 0, 0, 0] and encoded[1, 1:5].tolist() == [0, 0, 0, 0]
    assert encoded[0, 5:].tolist() == np.eye(3)[int(fit_.fill[2])].tolist()


def test_a_table_network_exports_and_runs_without_its_classes(tmp_path: Path) -> None:
    dataset = load_dataset(
        config(write(prices(), tmp_path), one_hot_max=8, missing="impute"),
        0,
        Path(),
        task="regression",
    )
    assert dataset.table is not None and dataset.features is not None
    rows = dataset.features[:100]
    mean, std = np.zeros(4, np.float32), np.ones(4, np.float32)
    network = build_network(
        mlp,
        dataset.spec,
        {"hidden_units": 8},
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
        target=(15.0, 4.0),
        table=fit_table(rows, dataset.table),
    )
    served = servable(network, dataset.spec).eval()
    program = load_exported(export_network(served, torch.from_numpy(rows[:5])))
    with_gap = rows[:7].copy()
    with_gap[0, 0], with_gap[1, 3] = np.nan, np.nan
    expected = served(torch.from_numpy(with_gap)).detach()
    assert torch.isfinite(expected).all() and expected.shape == (7,)
    assert torch.allclose(program(torch.from_numpy(with_gap)), expected, atol=1e-5)


def cell(frame: pd.DataFrame, column: str, row: int, value: Any) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


BAD_TABLES: dict[str, tuple[Any, dict[str, Any], str]] = {
    "gap-refused": (
        lambda f: cell(f, "x", 4, None),
        {},
        "column 'x' has 1 missing values (data.missing: drop or impute)",
    ),
    "target-gap": (lambda f: cell(f, "price", 4, None), {}, "column 'price' has 1 empty targets"),
    "text-target": (
        lambda f: f.assign(price="cheap"),
        {},
        "task regression needs numeric targets, got text such as 'cheap'",
    ),
    "empty-column": (
        lambda f: f.assign(note=np.nan),
        {},
        "column 'note' is entirely empty (leave it out: data.drop_columns)",
    ),
    "identifier": (
        lambda f: f,
        {"drop_columns": []},
        "column 'id' has a different value in every row, an identifier",
    ),
    "broken-number": (
        lambda f: cell(f, "x", 9, "n/a?"),
        {},
        "column 'x' is not numeric (e.g. 'n/a?')",
    ),
    "unknown-drop": (lambda f: f, {"drop_columns": ["ID"]}, "data.drop_columns: no column 'ID'"),
}


@pytest.mark.parametrize(("change", "settings", "fragment"), BAD_TABLES.values(), ids=BAD_TABLES)
def test_bad_tables_give_one_line_naming_the_file_and_column(
    tmp_path: Path, change: Any, settings: dict[str, Any], fragment: str
) -> None:
    path = write(change(prices()), tmp_path)
    with pytest.raises(PipelineError) as info:
        load_dataset(config(path, **settings), 0, Path(), task="regression")
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_missing_drop_leaves_out_rows_with_a_gap_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = cell(cell(cell(prices(), "x", 3, None), "city", 5, None), "price", 8, None)
    path = write(frame, tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(config(path, missing="drop"), 0, Path(), task="regression")
    assert dataset.features is not None and gaps_in(dataset.features) == 0
    assert len(dataset.labels) == ROWS - 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}: left out 3 of {ROWS} rows with a gap (data.missing: drop)"]
    imputed = load_dataset(config(path, missing="impute"), 0, Path(), task="regression")
    assert len(imputed.labels) == ROWS - 1  # the row without a target cannot be learned from
    assert imputed.features is not None and gaps_in(imputed.features) == 2


def gaps_in(features: np.ndarray) -> int:
    """The gaps left for the model to fill."""
    return int(np.isnan(features).sum())


def test_encoding_reads_numbers_as_text_the_same_way() -> None:
    spec = [{"name": "zone", "kind": "category", "categories": ["3", "7", "b"]}]
    frame = pd.DataFrame({"zone": [3, 7.0, "b", None, "q"]})
    assert encode_frame(frame, spec)[:, 0].tolist()[:3] == [0, 1, 2]
    assert np.isnan(encode_frame(frame, spec)[3, 0]) and encode_frame(frame, spec)[4, 0] == 3
    with pytest.raises(ValueError, match="missing columns zone"):
        encode_frame(pd.DataFrame({"other": [1]}), spec)
    with pytest.raises(ValueError, match="column 'n' holds 'lots', not a number"):
        encode_frame(pd.DataFrame({"n": ["1", "lots"]}), [{"name": "n", "kind": "number"}])
