"""Prediction inputs and outputs: CSV, .npy and image folders on real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.data import Dataset, Split
from pipeline.core.predict import (
    Inputs,
    held_out_rows,
    labelled_score,
    predictions_frame,
    read_inputs,
    write_csv,
)
from pipeline.errors import PipelineError


@pytest.fixture(scope="module")
def metadata(digits: Dataset) -> dict[str, Any]:
    return {
        "feature_names": list(digits.columns),
        "class_names": list(digits.class_names),
        "input_shape": [1, 8, 8],
        "feature_range": [0.0, 16.0],
    }


def test_held_out_rows_round_trip_through_csv(
    tmp_path: Path, digits: Dataset, digits_split: Split, metadata: dict[str, Any]
) -> None:
    path = tmp_path / "test.csv"
    write_csv(held_out_rows(digits, digits_split), path)
    inputs = read_inputs(path, metadata)
    np.testing.assert_array_equal(inputs.features, digits.features[digits_split.test])
    assert inputs.labels == [digits.class_names[i] for i in digits.labels[digits_split.test]]


def test_csv_columns_may_come_in_any_order_with_extra_ones(
    tmp_path: Path, digits: Dataset, metadata: dict[str, Any]
) -> None:
    frame = pd.DataFrame(digits.features[:4], columns=list(digits.columns))
    frame = frame[list(reversed(frame.columns))].assign(comment="x")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    inputs = read_inputs(tmp_path / "rows.csv", metadata)
    np.testing.assert_array_equal(inputs.features, digits.features[:4])
    assert inputs.labels is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["pixel_0_3"]), "missing columns pixel_0_3"),
        (lambda f: f.assign(pixel_1_1="dark"), "column 'pixel_1_1' is not numeric"),
        (lambda f: f.assign(pixel_2_2=np.nan), "column 'pixel_2_2' has 3 missing values"),
    ],
)
def test_bad_csv_names_the_column(
    tmp_path: Path, digits: Dataset, metadata: dict[str, Any], change: Any, message: str
) -> None:
    frame = change(pd.DataFrame(digits.features[:3], columns=list(digits.columns)))
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PipelineError, match=f"bad.csv: {message}"):
        read_inputs(tmp_path / "bad.csv", metadata)


def test_npy_rows_and_images(tmp_path: Path, digits: Dataset, metadata: dict[str, Any]) -> None:
    np.save(tmp_path / "rows.npy", digits.features[:5])
    np.save(tmp_path / "images.npy", digits.features[:5].reshape(5, 8, 8))
    for name in ("rows.npy", "images.npy"):
        np.testing.assert_array_equal(
            read_inputs(tmp_path / name, metadata).features, digits.features[:5]
        )
    np.save(tmp_path / "wrong.npy", np.zeros((2, 10)))
    with pytest.raises(PipelineError, match=r"shape \(2, 10\); the model takes rows of 64"):
        read_inputs(tmp_path / "wrong.npy", metadata)


@pytest.mark.parametrize(
    ("value", "where"),
    [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf"), (1e39, "beyond float32")],
)
def test_npy_with_values_the_model_cannot_take_is_refused(
    tmp_path: Path, digits: Dataset, metadata: dict[str, Any], value: float, where: str
) -> None:
    rows = digits.features[:4].astype(np.float64)
    rows[2, 5] = value
    np.save(tmp_path / "rows.npy", rows)
    with pytest.raises(PipelineError, match=r"1 values are NaN, infinite or beyond float32's "
                       r"range \(first in row 2\)"):  # fmt: skip
        read_inputs(tmp_path / "rows.npy", metadata)


def test_csv_with_infinite_values_is_refused(
    tmp_path: Path, digits: Dataset, metadata: dict[str, Any]
) -> None:
    frame = pd.DataFrame(digits.features[:4], columns=list(digits.columns))
    frame.loc[1, "pixel_3_3"] = np.inf
    frame.to_csv(tmp_path / "rows.csv", index=False)
    with pytest.raises(PipelineError, match="'pixel_3_3' has 1 infinite or out-of-range values"):
        read_inputs(tmp_path / "rows.csv", metadata)


def test_image_folder_is_scaled_to_the_training_range(
    tmp_path: Path, digits: Dataset, metadata: dict[str, Any]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    # Digits pixels are 0..16: saved as 0..255 grey images at 4x the size.
    for i in range(3):
        pixels = (digits.features[i].reshape(8, 8) * 255 / 16).round().astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    inputs = read_inputs(folder, metadata)
    assert inputs.ids == ["0.png", "1.png", "2.png"]
    np.testing.assert_allclose(inputs.features, digits.features[:3], atol=0.1)


def test_image_folder_errors(tmp_path: Path, metadata: dict[str, Any]) -> None:
    with pytest.raises(PipelineError, match="no images"):
        read_inputs(tmp_path, metadata)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"broken\.png: cannot read as an image"):
        read_inputs(tmp_path, metadata)
    with pytest.raises(PipelineError, match=r"takes examples shaped \[64\], not images"):
        read_inputs(tmp_path, {**metadata, "input_shape": [64]})


def test_unknown_inputs(tmp_path: Path, metadata: dict[str, Any]) -> None:
    with pytest.raises(PipelineError, match="no such file or folder"):
        read_inputs(tmp_path / "absent.csv", metadata)
    (tmp_path / "rows.parquet").write_bytes(b"")
    with pytest.raises(PipelineError, match="unsupported input"):
        read_inputs(tmp_path / "rows.parquet", metadata)


def test_predictions_frame_and_accuracy() -> None:
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    inputs = Inputs(np.zeros((3, 1), np.float32), ["a", "b", "c"], ["no", "yes", "yes"])
    frame = predictions_frame(probabilities, ["no", "yes"], inputs)
    assert frame["prediction"].tolist() == ["no", "yes", "no"]
    assert frame["probability"].tolist() == [0.9, 0.7, 0.6]
    assert list(frame.columns) == ["id", "prediction", "probability", "p_no", "p_yes", "label"]
    classifier = {"class_names": ["no", "yes"], "metric": "val_acc"}
    assert labelled_score(probabilities, classifier, inputs) == ("test_acc", pytest.approx(2 / 3))
    # Versions registered before the metric was recorded ranked on accuracy.
    assert labelled_score(probabilities, {"class_names": ["no", "yes"]}, inputs)[1] == 2 / 3
    macro = labelled_score(probabilities, {**classifier, "metric": "val_macro_f1"}, inputs)
    assert macro == ("test_macro_f1", pytest.approx((2 / 3 + 2 / 3) / 2))
    unknown = Inputs(inputs.features, inputs.ids, ["no", "maybe", "yes"])
    with pytest.raises(PipelineError, match="column 'label': 'maybe' is not one of"):
        labelled_score(probabilities, classifier, unknown)


def test_regression_predictions_are_values_scored_on_the_metric() -> None:
    predictions = np.array([10.0, 20.0, 33.0])
    inputs = Inputs(np.zeros((3, 1), np.float32), ["a", "b", "c"], ["10", "22", "30"])
    frame = predictions_frame(predictions, [], inputs)
    assert list(frame.columns) == ["id", "prediction", "label"]
    assert frame["prediction"].tolist() == [10.0, 20.0, 33.0]
    regression = {"task": "regression", "class_names": [], "metric": "val_mae"}
    assert labelled_score(predictions, regression, inputs) == ("test_mae", pytest.approx(5 / 3))
    rmse = labelled_score(predictions, {**regression, "metric": "val_rmse"}, inputs)
    assert rmse == ("test_rmse", pytest.approx(np.sqrt(13 / 3)))


def test_write_csv_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    class Unwritable(pd.DataFrame):
        """Writes half its rows, then the disk is full: a plain write would leave them."""

        def to_csv(self, stream: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            pd.DataFrame(self).iloc[:1].to_csv(stream, *args, **kwargs)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_csv(Unwritable({"a": [1, 2]}), target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
