"""Where examples come from: scikit-learn's bundled sets, a CSV file, IDX files (MNIST,
Fashion-MNIST) downloaded with their checksums verified. Every problem with a file is one line
naming the file and the column."""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DataConfig, Experiment
from pipeline.config.door import add_to_path
from pipeline.config.experiment import REGRESSION_SOURCES, TABLE_SOURCES
from pipeline.config.metrics import Task
from pipeline.core.data import Dataset, Split, TableColumn, TableLayout, split_dataset, subset
from pipeline.core.loaders import load_with, regression_targets
from pipeline.core.table_encoding import category_text, encode_frame
from pipeline.errors import PipelineError, first_line

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the published .gz files (as verified by torchvision).
IDX_SOURCES: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        tuple(str(d) for d in range(10)),
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        (
            "t-shirt",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle-boot",
        ),
    ),
}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


IMAGE_FOLDER_LOADER = "pipeline.core.images:image_folder"
# scikit-learn's bundled sets, by the name of their `load_` function.
BUNDLED = ("digits", "wine", "breast_cancer", "diabetes")


def load_dataset(
    config: DataConfig,
    seed: int,
    cache_dir: Path,
    *,
    code_paths: Sequence[str] = (),
    task: Task,
) -> Dataset:
    """Load the configured data set for `task` (a subset of `limit` rows if set); a loader is
    imported from `code_paths`."""
    add_to_path(code_paths)
    if config.loader is not None:
        name = config.loader.partition(":")[0]
        dataset = load_with(config.loader, config.args, name=name, task=task)
    elif config.source == "image_folder":
        assert config.path is not None
        dataset = load_with(
            IMAGE_FOLDER_LOADER, image_folder_args(config), name=Path(config.path).name
        )
    elif config.source in BUNDLED:
        dataset = load_bundled(config.source)
    elif config.source in TABLE_SOURCES:
        assert config.path is not None
        dataset = load_table(Path(config.path), config, task=task, source=config.source)
    else:
        source = str(config.source)
        folder = Path(config.path) if config.path else cache_dir / source
        if config.download:
            url, checksums, _ = IDX_SOURCES[source]
            download_idx(folder, config.mirror or url, checksums)
        dataset = load_idx_dataset(source, folder)
    return subset(dataset, config.limit, seed) if config.limit else dataset


def image_folder_args(config: DataConfig) -> dict[str, Any]:
    """The image folder loader's arguments: the folder made absolute, so that every process
    reads the same one."""
    assert config.path is not None
    size = list(config.image_size) if config.image_size else None
    return {
        "path": str(Path(config.path).resolve()),
        "image_size": size,
        "channels": config.channels,
    }


def load_split(
    config: DataConfig,
    seed: int,
    cache_dir: Path,
    *,
    code_paths: Sequence[str] = (),
    task: Task,
) -> tuple[Dataset, Split]:
    """The configured data set and its seeded split: what a sweep, its retrain and a promotion
    of its model each rebuild from the same settings."""
    dataset = load_dataset(config, seed, cache_dir, code_paths=code_paths, task=task)
    return dataset, split_dataset(dataset, config, seed)


def experiment_split(experiment: Experiment, cache_dir: Path) -> tuple[Dataset, Split]:
    """`load_split` of an experiment's data, seed, code paths and task."""
    return load_split(
        experiment.data,
        experiment.seed,
        cache_dir,
        code_paths=experiment.code.paths,
        task=experiment.task,
    )


def source_uri(config: DataConfig, cache_dir: Path) -> str:
    """Where the configured data come from, as the runs record it."""
    if config.loader is not None:
        return f"{config.loader}({', '.join(f'{k}={v!r}' for k, v in config.args.items())})"
    if config.source in BUNDLED:
        return f"sklearn.datasets.load_{config.source}"
    if config.source in (*TABLE_SOURCES, "image_folder"):
        assert config.path is not None
        return str(Path(config.path).resolve())
    return str((Path(config.path) if config.path else cache_dir / str(config.source)).resolve())


def load_bundled(name: str) -> Dataset:
    """A real data set shipped inside scikit-learn (no network)."""
    from sklearn import datasets as sk_datasets  # scikit-learn loads only where it is used

    bunch = getattr(sk_datasets, f"load_{name}")()
    features = bunch.data.astype(np.float32)
    shape = (1, 8, 8) if name == "digits" else (features.shape[1],)
    if name in REGRESSION_SOURCES:
        return Dataset(
            name=name,
            features=features,
            labels=bunch.target.astype(np.float64),
            class_names=(),
            input_shape=shape,
            feature_names=tuple(str(c) for c in bunch.feature_names),
            task="regression",
        )
    return Dataset(
        name=name,
        features=features,
        labels=bunch.target.astype(np.int64),
        class_names=tuple(str(c) for c in bunch.target_names),
        input_shape=shape,
        feature_names=tuple(str(c) for c in bunch.feature_names),
    )


def read_table(path: Path, dtype: dict[str, type] | None = None) -> pd.DataFrame:
    """A CSV file as a frame (columns of `dtype` read as that type); a missing or unparsable
    file is one line naming it."""
    try:
        return pd.read_csv(path, dtype=dtype)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such CSV file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot parse as CSV: {exc}") from None


def feature_problems(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """What stops these columns from being features: not numeric, missing values, values that
    are infinite or beyond float32's range (training would only diverge on them)."""
    problems = []
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            present = values.dropna()
            text = present[pd.to_numeric(present, errors="coerce").isna()]
            example = str(text.iloc[0]) if len(text) else ""
            problems.append(f"column '{column}' is not numeric (e.g. {example!r})")
            continue
        missing = int(values.isna().sum())
        if missing:
            problems.append(f"column '{column}' has {missing} missing values")
        huge = int((values.abs() > FLOAT32_MAX).sum())
        if huge:
            problems.append(f"column '{column}' has {huge} infinite or out-of-range values")
    return problems


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_feature_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Feature columns must be numeric, complete and finite; every problem is named at once."""
    raise_problems(path, feature_problems(frame, columns))


def raise_problems(path: Path, problems: list[str]) -> None:
    """One line listing every problem found in `path`, if any."""
    if len(problems) == 1:
        raise PipelineError(f"{path}: {problems[0]}; fix it (encode, fill or drop)")
    if problems:
        raise PipelineError(
            f"{path}: {len(problems)} problems: {'; '.join(problems)}; fix them (encode, fill "
            "or drop)"
        )


def cut_off(path: Path, frame: pd.DataFrame) -> bool:
    """Whether the file ends mid-row: no final newline, and its last row lacks values."""
    with path.open("rb") as stream:
        stream.seek(0, 2)
        if stream.tell() == 0:
            return False
        stream.seek(-1, 2)
        ends_clean = stream.read(1) in (b"\n", b"\r")
    return not ends_clean and len(frame) > 0 and bool(frame.iloc[-1].isna().any())


# A text column whose values are nearly all numbers is a number column with stray text (a
# broken file), not a category: this share of its values parse as numbers.
NUMBER_LIKE = 0.9
# A category with one value per row names rows rather than describing them; from this many rows.
IDENTIFIER_ROWS = 20


def read_rows(path: Path, source: str) -> pd.DataFrame:
    """A CSV or Parquet file as a frame; a missing or unreadable file is one line naming it."""
    if source == "csv":
        return read_table(path)
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such Parquet file") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise PipelineError(f"{path}: cannot read as Parquet: {first_line(exc)}") from None


def column_kind(values: pd.Series) -> str:
    """number, category, or broken (a number column with stray text)."""
    if pd.api.types.is_bool_dtype(values):
        return "category"
    if pd.api.types.is_numeric_dtype(values):
        return "number"
    present = values.dropna()
    parsed = pd.to_numeric(present, errors="coerce").notna().mean() if len(present) else 0.0
    return "broken" if parsed >= NUMBER_LIKE else "category"


def table_problems(frame: pd.DataFrame, kinds: dict[str, str], missing: str) -> list[str]:
    """What stops these columns (of these `column_kind`s) from being features, each problem
    naming its column: a column with no value, a number column with text or infinite values, a
    category with one value per row (an identifier), and, under data.missing: refuse, gaps."""
    problems = []
    for name in frame.columns:
        values = frame[name]
        if values.isna().all():
            problems.append(f"column '{name}' is entirely empty (leave it out: data.drop_columns)")
            continue
        kind = kinds[name]
        if kind == "broken":
            present = values.dropna()
            text = present[pd.to_numeric(present, errors="coerce").isna()]
            problems.append(f"column '{name}' is not numeric (e.g. {str(text.iloc[0])!r})")
            continue
        huge = int((values.abs() > FLOAT32_MAX).sum()) if kind == "number" else 0
        if huge:
            problems.append(f"column '{name}' has {huge} infinite or out-of-range values")
        rows = len(values)
        if kind == "category" and rows >= IDENTIFIER_ROWS and values.nunique() == rows:
            problems.append(
                f"column '{name}' has a different value in every row, an identifier rather "
                "than a feature (leave it out: data.drop_columns)"
            )
        gaps = int(values.isna().sum())
        if gaps and missing == "refuse":
            problems.append(
                f"column '{name}' has {gaps} missing values (data.missing: drop or impute)"
            )
    return problems


def load_table(
    path: Path, config: DataConfig, *, task: Task = "classification", source: str = "csv"
) -> Dataset:
    """A CSV or Parquet file: `config.target` is the target column (classes, or a regression's
    numbers), `config.drop_columns` are left out, and every other column is a feature: a number,
    or a category (text) encoded inside the model. Gaps as `config.missing` says."""
    assert config.target is not None
    target = config.target
    frame = read_rows(path, source)
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise PipelineError(f"{path}: no column '{target}' (columns: {', '.join(columns)})")
    if source == "csv" and cut_off(path, frame):
        raise PipelineError(
            f"{path}: truncated: its last line (row {len(frame)}) is cut off mid-row; was the "
            "file fully written?"
        )
    absent = [c for c in config.drop_columns if c not in columns]
    if absent:
        raise PipelineError(f"{path}: data.drop_columns: no column '{absent[0]}'")
    frame = frame.drop(columns=config.drop_columns)
    labels_raw = frame.pop(target)
    if frame.shape[1] == 0:
        raise PipelineError(f"{path}: no feature columns besides '{target}'")
    problems = []
    unlabelled = labels_raw.isna()
    if unlabelled.any() and config.missing == "refuse":
        noun = "empty labels" if task == "classification" else "empty targets"
        problems.append(f"column '{target}' has {int(unlabelled.sum())} {noun}")
    kinds = {name: column_kind(frame[name]) for name in frame.columns}
    problems += table_problems(frame, kinds, config.missing)
    raise_problems(path, problems)
    gaps = unlabelled.to_numpy()
    if config.missing == "drop":
        gaps = gaps | frame.isna().any(axis=1).to_numpy()
    if gaps.any():
        log.warning(
            "%s: left out %d of %d rows with a gap (data.missing: %s)",
            path,
            int(gaps.sum()),
            len(frame),
            config.missing,
        )
        frame, labels_raw = frame[~gaps], labels_raw[~gaps]
    layout = TableLayout(
        columns=tuple(
            TableColumn(str(name))
            if kinds[name] == "number"
            else TableColumn(str(name), tuple(sorted(set(category_text(frame[name]).dropna()))))
            for name in frame.columns
        ),
        one_hot_max=config.one_hot_max,
        imputes=config.missing == "impute",
    )
    features = encode_frame(frame, [column.spec() for column in layout.columns])
    rows = Dataset(
        name=path.stem,
        features=features,
        labels=np.zeros(0),
        class_names=(),
        input_shape=(frame.shape[1],),
        feature_names=tuple(str(c) for c in frame.columns),
        table=layout,
        raw=frame.reset_index(drop=True),
    )
    if task == "regression":
        targets = regression_targets(labels_raw.to_numpy(), f"{path}: column '{target}'")
        return replace(rows, labels=targets, task="regression")
    classes, labels = np.unique(labels_raw.astype(str).to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise PipelineError(f"{path}: column '{target}' has a single class; nothing to learn")
    return replace(rows, labels=labels.astype(np.int64), class_names=tuple(map(str, classes)))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise PipelineError(f"{path}: cannot read: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise PipelineError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PipelineError(f"{path}: truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise PipelineError(f"{path}: {len(raw) - header} data bytes, header promises {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise PipelineError(
        f"{folder}: missing {stem}[.gz]; set data.download: true or put the IDX files there"
    )


def load_idx_dataset(name: str, folder: Path) -> Dataset:
    """MNIST-style folder: train and t10k images/labels; t10k becomes the test split."""
    parts = {key: read_idx(find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    for prefix in ("train", "test"):
        images, labels = parts[f"{prefix}_images"], parts[f"{prefix}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PipelineError(
                f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match"
            )
    images = np.concatenate([parts["train_images"], parts["test_images"]])
    labels = np.concatenate([parts["train_labels"], parts["test_labels"]]).astype(np.int64)
    n_train = len(parts["train_labels"])
    class_names = IDX_SOURCES[name][2] if name in IDX_SOURCES else ()
    if len(class_names) <= int(labels.max()):
        class_names = tuple(str(c) for c in range(int(labels.max()) + 1))
    return Dataset(
        name=name,
        features=images.reshape(len(images), -1).astype(np.float32),
        labels=labels,
        class_names=class_names,
        input_shape=(1, *images.shape[1:]),
        test_rows=np.arange(n_train, len(labels)),
        feature_names=tuple(
            f"pixel_{r}_{c}" for r in range(images.shape[1]) for c in range(images.shape[2])
        ),
    )


def download_idx(folder: Path, base_url: str, checksums: dict[str, str]) -> None:
    """Fetch missing IDX files into `folder`, keeping each only if its MD5 matches."""
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in checksums.items():
        target = folder / filename
        if target.exists() or (folder / filename.removesuffix(".gz")).exists():
            continue
        url = base_url.rstrip("/") + "/" + filename
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                payload = response.read()
        except OSError as exc:
            raise PipelineError(f"cannot download {url}: {exc}") from None
        digest = hashlib.md5(payload).hexdigest()
        if digest != md5:
            raise PipelineError(
                f"{url}: checksum mismatch (md5 {digest}, expected {md5}); not saved"
            )
        partial = target.with_suffix(".part")
        partial.write_bytes(payload)
        partial.replace(target)
