"""Data: bundled digits, CSV and IDX files, downloads, and a seeded stratified split that keeps
the test rows out of everything a trial sees."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig
from pipeline.core.data import Dataset, Split, split_dataset, tuning_data
from pipeline.core.sources import IDX_FILES, download_idx, load_dataset, read_idx
from pipeline.errors import PipelineError

NO_CACHE = Path("/nonexistent")
TOLERANCE = 0.02  # per-class share of a split vs. the whole data set
SPECIES = ("setosa", "versicolor", "virginica")


def shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes) / len(labels)


def assert_partition(split: Split, n_rows: int) -> None:
    parts = [split.train, split.val, split.test]
    assert sum(len(p) for p in parts) == n_rows
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n_rows))
    assert not set(split.train) & set(split.val)
    assert not set(split.train) & set(split.test)
    assert not set(split.val) & set(split.test)


# --- a real CSV whose first feature is the row index -------------------------------------------


def write_csv(path: Path, n_rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Imbalanced classes (20% / 30% / 50%); column `idx` holds the row number."""
    rng = np.random.default_rng(seed)
    species = np.array(SPECIES)[
        rng.permutation(np.repeat([0, 1, 2], [n_rows // 5, 3 * n_rows // 10, n_rows // 2]))
    ]
    frame = pd.DataFrame(
        {
            "idx": np.arange(n_rows),
            "petal_length": rng.normal(4.0, 1.0, n_rows).round(3),
            "sepals": rng.integers(1, 5, n_rows),
            "species": species,
        }
    )
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture()
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "flowers.csv"
    write_csv(path)
    return path


def csv_config(path: Path, **extra: object) -> DataConfig:
    return DataConfig.model_validate(
        {"source": "csv", "path": str(path), "target": "species", **extra}
    )


def row_ids(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    return dataset.features[rows, 0].astype(np.int64)


# --- bundled digits -----------------------------------------------------------------------------


def test_digits_is_the_real_data_set(digits: Dataset) -> None:
    assert digits.features.shape == (1797, 64)
    assert digits.features.dtype == np.float32
    assert digits.labels.shape == (1797,) and digits.labels.dtype == np.int64
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(d) for d in range(10))
    assert digits.input_shape == (1, 8, 8)
    assert digits.test_rows is None
    assert digits.features.min() >= 0 and digits.features.max() == 16  # raw, not standardized


@pytest.mark.parametrize(
    ("source", "rows", "features", "classes"), [("wine", 178, 13, 3), ("breast_cancer", 569, 30, 2)]
)
def test_bundled_tabular_sets(source: str, rows: int, features: int, classes: int) -> None:
    dataset = load_dataset(
        DataConfig.model_validate({"source": source}), 0, NO_CACHE, task="classification"
    )
    assert dataset.features.shape == (rows, features)
    assert dataset.num_classes == classes
    assert len(dataset.input_shape) == 1


# --- splitting ----------------------------------------------------------------------------------


def test_split_is_a_stratified_partition(digits: Dataset) -> None:
    split = split_dataset(digits, DataConfig(), seed=0)
    assert_partition(split, 1797)
    whole = shares(digits.labels, 10)
    for part in (split.train, split.val, split.test):
        assert np.abs(shares(digits.labels[part], 10) - whole).max() < TOLERANCE
    assert abs(len(split.test) / 1797 - 0.15) < 0.01
    assert abs(len(split.val) / 1797 - 0.15) < 0.01
    assert np.array_equal(split.tuning_rows, np.concatenate([split.train, split.val]))


def test_split_fractions_are_honoured(digits: Dataset) -> None:
    split = split_dataset(digits, DataConfig(val_fraction=0.1, test_fraction=0.3), seed=0)
    assert_partition(split, 1797)
    assert abs(len(split.test) / 1797 - 0.3) < 0.01
    assert abs(len(split.val) / 1797 - 0.1) < 0.01


def test_same_seed_same_split_and_fingerprint(digits: Dataset) -> None:
    a = split_dataset(digits, DataConfig(), seed=3)
    b = split_dataset(digits, DataConfig(), seed=3)
    for x, y in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]:
        assert np.array_equal(x, y)
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16


def test_different_seed_different_split_and_fingerprint(digits: Dataset) -> None:
    a = split_dataset(digits, DataConfig(), seed=3)
    b = split_dataset(digits, DataConfig(), seed=4)
    assert not np.array_equal(a.test, b.test)
    assert a.fingerprint != b.fingerprint


def test_fingerprint_tells_data_sets_apart(digits: Dataset) -> None:
    small = load_dataset(DataConfig(limit=500), 3, NO_CACHE, task="classification")
    assert (
        split_dataset(small, DataConfig(), 3).fingerprint
        != split_dataset(digits, DataConfig(), 3).fingerprint
    )


def test_tuning_data_never_contains_test_rows(csv_file: Path) -> None:
    dataset = load_dataset(csv_config(csv_file), 0, NO_CACHE, task="classification")
    split = split_dataset(dataset, csv_config(csv_file), seed=0)
    assert_partition(split, 300)
    data = tuning_data(dataset, split, shared_scale=False)
    seen = data.features[:, 0].astype(np.int64)
    assert not set(seen) & set(row_ids(dataset, split.test))
    assert np.array_equal(seen, split.tuning_rows)
    assert np.array_equal(data.labels, dataset.labels[split.tuning_rows])
    assert data.spec.num_outputs == 3 and len(data.spec.input_shape) == 1
    # The single fold is (train, val), as indices into the tuning rows.
    ((fold_train, fold_val),) = data.folds
    assert np.array_equal(seen[fold_train], split.train)
    assert np.array_equal(seen[fold_val], split.val)


def test_csv_split_is_stratified(csv_file: Path) -> None:
    dataset = load_dataset(csv_config(csv_file), 0, NO_CACHE, task="classification")
    split = split_dataset(dataset, csv_config(csv_file), seed=1)
    whole = shares(dataset.labels, 3)
    for part in (split.train, split.val, split.test):
        assert np.abs(shares(dataset.labels[part], 3) - whole).max() < TOLERANCE


def test_k_folds_partition_the_tuning_rows(csv_file: Path) -> None:
    config = csv_config(csv_file, cv_folds=3)
    dataset = load_dataset(config, 0, NO_CACHE, task="classification")
    split = split_dataset(dataset, config, seed=0)
    data = tuning_data(dataset, split, shared_scale=config.shared_scale)
    n_tuning = len(split.tuning_rows)
    assert len(data.folds) == 3
    vals = [val for _, val in data.folds]
    assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(n_tuning))
    test_ids = set(row_ids(dataset, split.test))
    whole = shares(data.labels, 3)
    for train, val in data.folds:
        assert not set(train) & set(val)
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n_tuning))
        ids = data.features[np.concatenate([train, val]), 0].astype(np.int64)
        assert not set(ids) & test_ids
        assert np.abs(shares(data.labels[val], 3) - whole).max() < 0.05
    assert split_dataset(dataset, config, seed=0).fingerprint == split.fingerprint


def test_limit_gives_a_stratified_subset(digits: Dataset) -> None:
    small = load_dataset(DataConfig(limit=300), seed=0, cache_dir=NO_CACHE, task="classification")
    assert small.features.shape == (300, 64)
    assert small.input_shape == (1, 8, 8) and small.num_classes == 10
    assert np.abs(shares(small.labels, 10) - shares(digits.labels, 10)).max() < TOLERANCE
    # Every kept row is a real digits row, with its own label.
    lookup = {
        row.tobytes(): label for row, label in zip(digits.features, digits.labels, strict=True)
    }
    assert all(
        lookup[row.tobytes()] == label
        for row, label in zip(small.features, small.labels, strict=True)
    )
    other = load_dataset(DataConfig(limit=300), seed=1, cache_dir=NO_CACHE, task="classification")
    assert not np.array_equal(small.features, other.features)


def test_limit_of_at_least_all_rows_keeps_everything(csv_file: Path) -> None:
    dataset = load_dataset(csv_config(csv_file, limit=1000), 0, NO_CACHE, task="classification")
    assert np.array_equal(row_ids(dataset, np.arange(300)), np.arange(300))


def test_too_few_examples_of_a_class_to_split(tmp_path: Path) -> None:
    path = tmp_path / "rare.csv"
    pd.DataFrame({"x": range(22), "species": ["a"] * 20 + ["b"] * 2}).to_csv(path, index=False)
    dataset = load_dataset(csv_config(path), 0, NO_CACHE, task="classification")
    with pytest.raises(PipelineError, match="rare: every class needs at least 3"):
        split_dataset(dataset, csv_config(path), 0)


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_loads_with_class_names(tmp_path: Path) -> None:
    path = tmp_path / "flowers.csv"
    frame = write_csv(path)
    dataset = load_dataset(csv_config(path), 0, NO_CACHE, task="classification")
    assert dataset.name == "flowers"
    assert dataset.class_names == SPECIES
    assert dataset.features.shape == (300, 3) and dataset.features.dtype == np.float32
    assert [dataset.class_names[i] for i in dataset.labels] == list(frame["species"])
    assert np.allclose(dataset.features[:, 1], frame["petal_length"])
    assert np.bincount(dataset.labels).tolist() == [60, 90, 150]
    assert len(dataset.input_shape) == 1 and dataset.test_rows is None


def test_csv_with_numeric_labels(tmp_path: Path) -> None:
    path = tmp_path / "numeric.csv"
    pd.DataFrame({"x": range(9), "y": [0.5] * 9, "label": [1, 0, 2] * 3}).to_csv(path, index=False)
    dataset = load_dataset(
        DataConfig(source="csv", path=str(path), target="label"), 0, NO_CACHE, task="classification"
    )
    assert dataset.class_names == ("0", "1", "2")
    assert dataset.labels.tolist() == [1, 0, 2] * 3


def break_csv(path: Path, column: str, row: int, value: str) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("column", "row", "value", "fragment"),
    [
        ("petal_length", 17, "long", "column 'petal_length' is not numeric"),
        ("sepals", 40, "", "column 'sepals' has 1 missing values"),
        ("species", 3, "", "column 'species' has 1 empty labels"),
    ],
)
def test_bad_csv_column_names_file_and_column(
    csv_file: Path, column: str, row: int, value: str, fragment: str
) -> None:
    break_csv(csv_file, column, row, value)
    with pytest.raises(PipelineError) as info:
        load_dataset(csv_config(csv_file), 0, NO_CACHE, task="classification")
    assert str(csv_file) in str(info.value)
    assert fragment in str(info.value)


def test_non_numeric_csv_column_quotes_the_offending_value(csv_file: Path) -> None:
    break_csv(csv_file, "petal_length", 17, "long")
    with pytest.raises(PipelineError, match=r"'petal_length' is not numeric \(e\.g\. 'long'\)"):
        load_dataset(csv_config(csv_file), 0, NO_CACHE, task="classification")


def test_csv_missing_target_column(csv_file: Path) -> None:
    config = DataConfig(source="csv", path=str(csv_file), target="label")
    with pytest.raises(PipelineError) as info:
        load_dataset(config, 0, NO_CACHE, task="classification")
    message = str(info.value)
    assert str(csv_file) in message
    assert "no column 'label'" in message and "species" in message


def test_csv_single_class(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    pd.DataFrame({"x": range(10), "species": ["setosa"] * 10}).to_csv(path, index=False)
    with pytest.raises(PipelineError) as info:
        load_dataset(csv_config(path), 0, NO_CACHE, task="classification")
    assert str(path) in str(info.value)
    assert "column 'species' has a single class" in str(info.value)


def test_csv_without_feature_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    pd.DataFrame({"species": list(SPECIES) * 3}).to_csv(path, index=False)
    with pytest.raises(PipelineError, match="no feature columns besides 'species'"):
        load_dataset(csv_config(path), 0, NO_CACHE, task="classification")


def test_csv_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(PipelineError) as info:
        load_dataset(csv_config(path), 0, NO_CACHE, task="classification")
    assert str(path) in str(info.value)


# --- IDX (MNIST format) -------------------------------------------------------------------------

N_TRAIN, N_TEST, HEIGHT, WIDTH = 60, 15, 7, 5


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: magic 0x0000 08 <ndim>, big-endian uint32 dims, then unsigned bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def idx_parts() -> dict[str, np.ndarray]:
    """Pixel [0, 0] is the row's index within its file, pixel [0, 1] is 1 for t10k rows."""
    parts: dict[str, np.ndarray] = {}
    for prefix, n, marker in (("train", N_TRAIN, 0), ("test", N_TEST, 1)):
        images = np.full((n, HEIGHT, WIDTH), 100, np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 0, 1] = marker
        parts[f"{prefix}_images"] = images
        parts[f"{prefix}_labels"] = np.arange(n, dtype=np.uint8) % 3
    return parts


def write_idx_folder(folder: Path, gz: bool | tuple[bool, ...]) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = idx_parts()
    flags = gz if isinstance(gz, tuple) else (gz,) * 4
    for (key, stem), zipped in zip(IDX_FILES.items(), flags, strict=True):
        payload = idx_bytes(parts[key])
        if zipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    return parts


def mnist_config(folder: Path, **extra: object) -> DataConfig:
    return DataConfig.model_validate({"source": "mnist", "path": str(folder), **extra})


@pytest.mark.parametrize(
    "gz", [False, True, (True, False, False, True)], ids=["plain", "gzipped", "mixed"]
)
def test_idx_folder_loads_and_t10k_is_the_test_split(
    tmp_path: Path, gz: bool | tuple[bool, ...]
) -> None:
    parts = write_idx_folder(tmp_path / "mnist", gz)
    dataset = load_dataset(
        mnist_config(tmp_path / "mnist"), 0, tmp_path / "cache", task="classification"
    )
    assert dataset.input_shape == (1, HEIGHT, WIDTH)
    assert dataset.features.shape == (N_TRAIN + N_TEST, HEIGHT * WIDTH)
    assert dataset.features.dtype == np.float32
    assert dataset.class_names == tuple(str(d) for d in range(10))
    expected_labels = np.concatenate([parts["train_labels"], parts["test_labels"]])
    assert np.array_equal(dataset.labels, expected_labels)
    assert np.array_equal(
        dataset.features[:N_TRAIN].reshape(-1, HEIGHT, WIDTH), parts["train_images"]
    )
    assert dataset.test_rows is not None
    assert np.array_equal(dataset.test_rows, np.arange(N_TRAIN, N_TRAIN + N_TEST))

    split = split_dataset(dataset, mnist_config(tmp_path / "mnist"), seed=0)
    assert_partition(split, N_TRAIN + N_TEST)
    assert np.array_equal(split.test, np.arange(N_TRAIN, N_TRAIN + N_TEST))
    data = tuning_data(dataset, split, shared_scale=True)
    assert (data.features[:, 1] == 0).all()  # no t10k pixel marker among the tuning rows
    assert np.array_equal(np.sort(data.features[:, 0]), np.arange(N_TRAIN))
    assert data.spec.input_shape == (1, HEIGHT, WIDTH)


def test_idx_default_folder_is_the_cache(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "cache" / "fashion_mnist", gz=True)
    dataset = load_dataset(
        DataConfig(source="fashion_mnist"), 0, tmp_path / "cache", task="classification"
    )
    assert dataset.class_names[0] == "t-shirt" and dataset.num_classes == 10


def test_idx_limit_keeps_test_rows_marked(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=False)
    dataset = load_dataset(
        mnist_config(tmp_path / "mnist", limit=45), 0, tmp_path, task="classification"
    )
    assert len(dataset.labels) == 45
    assert dataset.test_rows is not None
    is_test = dataset.features[:, 1] == 1
    assert np.array_equal(dataset.test_rows, np.flatnonzero(is_test))
    split = split_dataset(dataset, mnist_config(tmp_path / "mnist", limit=45), 0)
    assert np.array_equal(split.test, np.flatnonzero(is_test))


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    values = np.array([[-1.5, 2.25], [3.0, 1e6]], ">f4")
    path = tmp_path / "floats-idx2"
    path.write_bytes(struct.pack(">I", 0x0D02) + struct.pack(">2I", 2, 2) + values.tobytes())
    assert np.array_equal(read_idx(path), values)


def test_truncated_idx_file(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / IDX_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(PipelineError) as info:
        load_dataset(mnist_config(tmp_path / "mnist"), 0, tmp_path, task="classification")
    assert str(path) in str(info.value)
    assert "header promises" in str(info.value)


@pytest.mark.filterwarnings("error::ResourceWarning")
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_read_idx_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array([1, 2, 3], np.uint8)))
    assert read_idx(path).tolist() == [1, 2, 3]


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(PipelineError, match="bad magic number"):
        read_idx(path)


def test_idx_truncated_inside_header(tmp_path: Path) -> None:
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8))[:9])
    with pytest.raises(PipelineError, match=re.escape(str(path))):
        read_idx(path)


def test_truncated_gzipped_idx_file(tmp_path: Path) -> None:
    path = tmp_path / "t-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 8, 8), np.uint8)))[:-12])
    with pytest.raises(PipelineError, match=re.escape(str(path))):
        read_idx(path)


def test_idx_gz_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t-idx3-ubyte.gz"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    with pytest.raises(PipelineError, match=re.escape(str(path))):
        read_idx(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PipelineError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset(mnist_config(tmp_path / "mnist"), 0, tmp_path, task="classification")


def test_idx_images_and_labels_disagree(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=False)
    labels = np.zeros(N_TEST + 1, np.uint8)
    (tmp_path / "mnist" / IDX_FILES["test_labels"]).write_bytes(idx_bytes(labels))
    with pytest.raises(PipelineError, match="do not match"):
        load_dataset(mnist_config(tmp_path / "mnist"), 0, tmp_path, task="classification")


# --- downloads from a real local HTTP server ----------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def idx_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Serves gzipped IDX files from a folder on 127.0.0.1:<random port>; yields (url, folder)."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    served = tmp_path / "served"
    write_idx_folder(served, gz=True)
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def md5s(folder: Path) -> dict[str, str]:
    return {
        f"{stem}.gz": hashlib.md5((folder / f"{stem}.gz").read_bytes()).hexdigest()
        for stem in IDX_FILES.values()
    }


def test_download_idx_with_checksums(idx_server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = idx_server
    target = tmp_path / "downloaded"
    download_idx(target, url, md5s(served))
    assert sorted(p.name for p in target.iterdir()) == sorted(md5s(served))
    for name in md5s(served):
        assert (target / name).read_bytes() == (served / name).read_bytes()
    dataset = load_dataset(mnist_config(target), 0, tmp_path, task="classification")
    assert dataset.input_shape == (1, HEIGHT, WIDTH)
    assert len(dataset.labels) == N_TRAIN + N_TEST
    # Present files are not fetched again (the server no longer has them).
    for name in md5s(served):
        (served / name).unlink()
    download_idx(target, url, md5s(target))


def test_download_idx_wrong_checksum_saves_nothing(
    idx_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, served = idx_server
    checksums = md5s(served)
    bad = "t10k-images-idx3-ubyte.gz"
    checksums[bad] = "0" * 32
    target = tmp_path / "downloaded"
    with pytest.raises(PipelineError) as info:
        download_idx(target, url, checksums)
    assert f"{url}{bad}" in str(info.value)
    assert "checksum mismatch" in str(info.value)
    assert not (target / bad).exists()
    assert not list(target.glob("*.part"))
    # The files before it were verified and kept; nothing after it was fetched.
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    )


def test_download_idx_missing_on_server(idx_server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = idx_server
    checksums = md5s(served)
    (served / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PipelineError, match=r"cannot download .*train-labels-idx1-ubyte\.gz"):
        download_idx(tmp_path / "downloaded", url, checksums)
    assert not (tmp_path / "downloaded" / "train-labels-idx1-ubyte.gz").exists()


def test_load_dataset_downloads_from_mirror_and_verifies(
    idx_server: tuple[str, Path], tmp_path: Path
) -> None:
    # The mirror serves files that are not the published MNIST: the published checksums reject
    # them, and nothing lands in the cache.
    url, _ = idx_server
    config = DataConfig(source="mnist", download=True, mirror=url)
    with pytest.raises(PipelineError, match="checksum mismatch"):
        load_dataset(config, 0, tmp_path / "cache", task="classification")
    assert not list((tmp_path / "cache" / "mnist").iterdir())


def test_fold_statistics_come_from_each_fold_train_rows_only() -> None:
    from pipeline.config import DataConfig as _DataConfig
    from pipeline.core.data import column_stats, split_dataset, tuning_data
    from pipeline.core.sources import load_dataset

    config = _DataConfig(source="digits", cv_folds=3)
    dataset = load_dataset(config, seed=0, cache_dir=Path("/nonexistent"), task="classification")
    split = split_dataset(dataset, config, seed=0)
    data = tuning_data(dataset, split, shared_scale=config.shared_scale)
    assert len(data.fold_stats) == 3
    for (train, val), (mean, std) in zip(data.folds, data.fold_stats, strict=True):
        expected_mean, expected_std = column_stats(data.features[train], shared_scale=True)
        np.testing.assert_allclose(mean, expected_mean)
        np.testing.assert_allclose(std, expected_std)
        assert not np.allclose(mean, column_stats(data.features[val], shared_scale=True)[0])


def test_a_shared_scale_is_one_std_for_all_features(digits: Dataset) -> None:
    """Pixels share one unit: every feature is divided by the root mean square of the per-feature
    stds, so a rarely inked border pixel keeps its small scale; the means stay per feature."""
    from pipeline.core.data import column_stats

    mean, std = column_stats(digits.features, shared_scale=True)
    per_mean, per_std = column_stats(digits.features, shared_scale=False)
    np.testing.assert_array_equal(mean, per_mean)
    assert np.unique(std).size == 1
    assert std[0] == pytest.approx(np.sqrt(np.mean(digits.features.std(axis=0) ** 2)), rel=1e-5)
    border = np.argmin(np.where(per_std > 0, per_std, np.inf))  # the least varying inked pixel
    assert per_std[border] < 0.2 * std[0]
    # Blank rows still get std 1.
    _, blank = column_stats(np.zeros((3, 4), np.float32), shared_scale=True)
    np.testing.assert_array_equal(blank, np.ones(4, np.float32))


@pytest.mark.parametrize(
    ("values", "shared"),
    [
        ({"source": "digits"}, True),
        ({"source": "mnist"}, True),
        ({"source": "wine"}, False),
        ({"source": "csv", "path": "x.csv", "target": "y"}, False),
        ({"source": "digits", "standardize": "per_feature"}, False),
        ({"source": "csv", "path": "x.csv", "target": "y", "standardize": "shared"}, True),
    ],
)
def test_image_sources_share_one_scale_unless_told(values: dict[str, str], shared: bool) -> None:
    """The default is filled in on loading, so a sweep's recorded config names it."""
    config = DataConfig.model_validate(values)
    assert config.shared_scale is shared
    assert config.model_dump()["standardize"] == ("shared" if shared else "per_feature")
