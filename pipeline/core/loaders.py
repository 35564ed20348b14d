"""A loader's output made a Dataset: the user's `load(**args)` (or a built-in source that is a
loader too, such as `image_folder`) called through the door, and everything it returns checked
once, in one line per problem, before Ray starts.

A loader returns `(features, labels)` or a mapping with `features`, `labels` and optionally
`class_names` and `feature_names`. Features are a numpy array (or tensor) shaped
`(N, *input_shape)`, held in memory, or a map-style Dataset (`__getitem__`, `__len__`; an item
is the example's features, or a tuple whose first element is), read on demand. Labels are
integers or strings, one per example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.config.door import import_callable
from pipeline.config.metrics import Task
from pipeline.core.data import Dataset, ExampleSource, example_of, flat_example
from pipeline.errors import PipelineError


def call_loader(reference: str, args: Mapping[str, Any]) -> Any:
    """What `reference(**args)` returns; its failure is one line naming it."""
    load = import_callable(reference, (), "data.loader")
    try:
        return load(**args)
    except PipelineError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise PipelineError(
            f"data.loader {reference}: failed: {type(exc).__name__}: {exc}"
        ) from None


def unpack(output: Any, reference: str) -> tuple[Any, Any, Any, Any]:
    """(features, labels, class_names, feature_names) of a loader's output."""
    if isinstance(output, Mapping):
        missing = [k for k in ("features", "labels") if k not in output]
        unknown = set(output) - {"features", "labels", "class_names", "feature_names"}
        if missing or unknown:
            raise PipelineError(
                f"data.loader {reference}: returned a mapping "
                + (
                    f"without {', '.join(missing)}"
                    if missing
                    else f"with unknown keys {sorted(unknown)}"
                )
                + "; give features, labels and optionally class_names, feature_names"
            )
        return (
            output["features"],
            output["labels"],
            output.get("class_names"),
            output.get("feature_names"),
        )
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return output[0], output[1], None, None
    raise PipelineError(
        f"data.loader {reference}: returned a {type(output).__name__}; return (features, labels) "
        "or a mapping with features and labels"
    )


def encode_labels(
    labels: Any, class_names: Sequence[Any] | None, reference: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as integers 0..K-1 and the K class names (sorted, or in the order of the given
    class_names, which integer labels index)."""
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise PipelineError(
            f"data.loader {reference}: labels must be one per example (shape (N,)), got {raw.shape}"
        )
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise PipelineError(
                f"data.loader {reference}: labels are classes (integers or strings); got "
                "fractional or non-finite numbers"
            )
        raw = raw.astype(np.int64)
    if raw.dtype.kind not in "iubUSO":
        raise PipelineError(f"data.loader {reference}: labels of type {raw.dtype} are not classes")
    if raw.dtype.kind in "iub":
        values, encoded = np.unique(raw, return_inverse=True)
        if class_names is not None:
            names = list(class_names)
            if values.min() < 0 or values.max() >= len(names):
                raise PipelineError(
                    f"data.loader {reference}: integer labels index class_names, but a label is "
                    f"{int(values.max())} and there are {len(names)} class names"
                )
            return encoded.astype(np.int64), tuple(str(names[int(v)]) for v in values)
        return encoded.astype(np.int64), tuple(str(v) for v in values)
    text = raw.astype(str)
    if class_names is None:
        values, encoded = np.unique(text, return_inverse=True)
        return encoded.astype(np.int64), tuple(str(v) for v in values)
    names = [str(n) for n in class_names]
    unknown = sorted(set(text) - set(names))
    if unknown:
        raise PipelineError(
            f"data.loader {reference}: label '{unknown[0]}' is not among class_names {names}"
        )
    index = {name: i for i, name in enumerate(names)}
    present = sorted({index[t] for t in text})
    remap = {old: new for new, old in enumerate(present)}
    encoded = np.array([remap[index[t]] for t in text], dtype=np.int64)
    return encoded, tuple(names[i] for i in present)


def regression_targets(labels: Any, where: str) -> np.ndarray:
    """A regression's targets: one finite number per example (float64)."""
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise PipelineError(
            f"{where}: targets must be one per example (shape (N,)), got {raw.shape}"
        )
    try:
        values = raw.astype(np.float64)
    except (ValueError, TypeError):
        text = next((v for v in raw if not is_number(v)), raw[0] if len(raw) else "")
        raise PipelineError(
            f"{where}: task regression needs numeric targets, got text such as {str(text)!r}"
        ) from None
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise PipelineError(
            f"{where}: {len(bad)} targets are missing or infinite (first: row {int(bad[0])})"
        )
    return values


def is_number(value: Any) -> bool:
    try:
        float(value)
    except (ValueError, TypeError):
        return False
    return True


def load_with(
    reference: str, args: Mapping[str, Any], *, name: str, task: Task = "classification"
) -> Dataset:
    """The examples `reference(**args)` returns for `task`, every problem one line naming the
    loader."""
    features, labels, class_names, feature_names = unpack(call_loader(reference, args), reference)
    classes: tuple[str, ...] = ()
    if task == "regression":
        encoded = regression_targets(labels, f"data.loader {reference}")
    else:
        encoded, classes = encode_labels(labels, class_names, reference)
    if task == "classification" and len(classes) < 2:
        raise PipelineError(
            f"data.loader {reference}: the labels hold a single class "
            f"({classes[0] if classes else 'none'}); nothing to learn"
        )
    if is_array(features):
        try:
            array = np.asarray(features, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise PipelineError(
                f"data.loader {reference}: features are not numbers of one shape ({exc}); "
                "encode text and give every example the same shape"
            ) from None
        check_length(len(array), len(encoded), reference)
        if array.ndim < 2:
            raise PipelineError(
                f"data.loader {reference}: features shaped {array.shape}; give (N, *input_shape)"
            )
        flat = array.reshape(len(array), -1)
        bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if len(bad):
            raise PipelineError(
                f"data.loader {reference}: {len(bad)} examples hold NaN or infinite values "
                f"(first: row {int(bad[0])})"
            )
        return Dataset(
            name=name,
            features=flat,
            labels=encoded,
            class_names=classes,
            input_shape=tuple(int(d) for d in array.shape[1:]),
            feature_names=names_of(feature_names, flat.shape[1], reference),
            task=task,
        )
    if not (hasattr(features, "__getitem__") and hasattr(features, "__len__")):
        raise PipelineError(
            f"data.loader {reference}: features are a {type(features).__name__}; give a numpy "
            "array shaped (N, *input_shape) or a map-style torch Dataset"
        )
    try:
        examples = len(features)
    except Exception as exc:  # the user's Dataset may raise anything
        raise PipelineError(
            f"data.loader {reference}: len() of its Dataset failed: {exc}"
        ) from None
    check_length(examples, len(encoded), reference)
    shape, digest = scan_examples(features, reference)
    source = ExampleSource(loader=reference, args=dict(args), content_hash=digest, length=examples)
    source.remember(features)
    return Dataset(
        name=name,
        features=None,
        labels=encoded,
        class_names=classes,
        input_shape=shape,
        examples=source,
        feature_names=names_of(feature_names, int(np.prod(shape)), reference),
        task=task,
    )


def is_array(features: Any) -> bool:
    """A numpy array, or anything numpy reads as one (a torch tensor, nested lists)."""
    return isinstance(features, (np.ndarray, list)) or hasattr(features, "__array__")


def check_length(examples: int, labels: int, reference: str) -> None:
    if examples != labels:
        raise PipelineError(
            f"data.loader {reference}: {examples} examples but {labels} labels; give one label "
            "per example"
        )


def names_of(names: Sequence[Any] | None, width: int, reference: str) -> tuple[str, ...]:
    if names is None:
        return ()
    if len(names) != width:
        raise PipelineError(
            f"data.loader {reference}: {len(names)} feature_names for {width} features"
        )
    return tuple(str(n) for n in names)


def scan_examples(dataset: Any, reference: str) -> tuple[tuple[int, ...], str]:
    """Read every example once, one at a time (memory stays flat): each must have the first's
    shape and finite values. Returns that shape and a hash of all of them."""
    digest = hashlib.sha256()
    shape: tuple[int, ...] | None = None
    for index in range(len(dataset)):
        try:
            item = dataset[index]
        except PipelineError:
            raise
        except Exception as exc:  # the user's Dataset may raise anything
            raise PipelineError(
                f"data.loader {reference}: reading example {index} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            example = np.asarray(example_of(item), dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise PipelineError(
                f"data.loader {reference}: example {index} is not an array of numbers ({exc}); "
                "an item is the example's features, or a tuple whose first element is"
            ) from None
        if shape is None:
            shape = tuple(int(d) for d in example.shape)
        elif example.shape != shape:
            raise PipelineError(
                f"data.loader {reference}: example {index} is shaped {example.shape}, example 0 "
                f"{shape}; every example needs one shape"
            )
        row = flat_example(example)
        if not np.isfinite(row).all():
            raise PipelineError(
                f"data.loader {reference}: example {index} holds NaN or infinite values"
            )
        digest.update(row.tobytes())
    if shape is None:
        raise PipelineError(f"data.loader {reference}: the Dataset is empty")
    return shape, digest.hexdigest()[:16]
