"""Networks: our MLP and CNN builders' shapes, the Standardize input layer, dropout placement,
and the exported program that is all a registered version holds."""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.data import Dataset, ModelSpec, Split, column_stats
from pipeline.core.model import Standardize, build_network, export_network, load_exported
from pipeline.core.networks import ACTIVATION_LAYERS, Activation, cnn, mlp

ACTIVATIONS = get_args(Activation)
BUILDERS = {"mlp": mlp, "cnn": cnn}

MNIST_SHAPE = (1, 28, 28)
DIGITS_SHAPE = (1, 8, 8)


def feature_stats(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature scaling statistics of `rows`, as the model takes them."""
    mean, std = column_stats(rows, shared_scale=False)
    return torch.from_numpy(mean), torch.from_numpy(std)


def plain_stats(n_features: int) -> dict[str, torch.Tensor]:
    """Scaling statistics that leave inputs as they are, as `build_network` takes them."""
    return {"mean": torch.zeros(n_features), "std": torch.ones(n_features)}


def build_model(
    family: str,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    **args: Any,
) -> nn.Sequential:
    """One of our networks behind the scaling of its inputs, as a trial builds it."""
    shape = input_shape or (int(mean.numel()),)
    spec = ModelSpec(shape, num_classes, tuple(str(c) for c in range(num_classes)))
    return build_network(BUILDERS[family], spec, args, mean=mean, std=std)


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("hidden_layers", [0, 1, 2, 3])
def test_mlp_shapes(hidden_layers: int, activation: str) -> None:
    model = build_model(
        "mlp",
        **plain_stats(64),
        num_classes=10,
        hidden_layers=hidden_layers,
        hidden_units=24,
        activation=activation,
    )
    assert isinstance(model[0], Standardize)
    assert count(model, nn.Linear) == hidden_layers + 1
    assert count(model, ACTIVATION_LAYERS[activation]) == hidden_layers
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 64
    assert all(m.out_features == 24 for m in linears[:-1])
    assert linears[-1].out_features == 10
    logits = model(torch.randn(5, 64))
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()


def test_activation_table_covers_the_allowed_activations() -> None:
    assert set(ACTIVATION_LAYERS) == set(ACTIVATIONS)


def test_mlp_on_real_digits_rows(digits: Dataset, digits_split: Split) -> None:
    train = digits.features[digits_split.train]
    model = build_model(
        "mlp",
        **dict(zip(("mean", "std"), feature_stats(train), strict=True)),
        num_classes=digits.num_classes,
        hidden_layers=2,
        hidden_units=32,
    )
    logits = model(torch.from_numpy(digits.features[:7]))
    assert logits.shape == (7, 10)


@pytest.mark.parametrize(
    ("image_shape", "conv_layers", "kernel_size"),
    [
        (DIGITS_SHAPE, 1, 3),
        (DIGITS_SHAPE, 2, 3),
        (DIGITS_SHAPE, 3, 5),
        (DIGITS_SHAPE, 4, 3),
        (DIGITS_SHAPE, 2, 1),
        (DIGITS_SHAPE, 2, 7),
        (MNIST_SHAPE, 1, 3),
        (MNIST_SHAPE, 2, 5),
        (MNIST_SHAPE, 3, 3),
        (MNIST_SHAPE, 4, 7),
        ((3, 12, 10), 2, 3),
    ],
)
def test_cnn_shapes(image_shape: tuple[int, int, int], conv_layers: int, kernel_size: int) -> None:
    n_features = int(np.prod(image_shape))
    model = build_model(
        "cnn",
        **plain_stats(n_features),
        num_classes=10,
        input_shape=image_shape,
        conv_layers=conv_layers,
        conv_channels=4,
        kernel_size=kernel_size,
        hidden_layers=1,
        hidden_units=16,
    )
    assert isinstance(model[0], Standardize)
    assert count(model, nn.Conv2d) == conv_layers
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == image_shape[0]
    assert [c.out_channels for c in convs] == [4 * 2**i for i in range(conv_layers)]
    assert model(torch.randn(3, n_features)).shape == (3, 10)


@pytest.mark.parametrize(
    ("image_shape", "conv_layers", "kernel_size"), [(DIGITS_SHAPE, 4, 4), (MNIST_SHAPE, 3, 2)]
)
def test_cnn_with_even_kernel(
    image_shape: tuple[int, int, int], conv_layers: int, kernel_size: int
) -> None:
    n_features = int(np.prod(image_shape))
    model = build_model(
        "cnn",
        **plain_stats(n_features),
        num_classes=10,
        input_shape=image_shape,
        conv_layers=conv_layers,
        conv_channels=4,
        kernel_size=kernel_size,
    )
    assert model(torch.randn(2, n_features)).shape == (2, 10)


def test_cnn_needs_an_image_shape() -> None:
    with pytest.raises(ValueError, match=r"cnn needs images shaped \(channels, height, width\)"):
        build_model("cnn", **plain_stats(13), num_classes=3)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_layers_only_when_dropout(family: str, dropout: float) -> None:
    args = {"hidden_layers": 3, "hidden_units": 8, "dropout": dropout}
    if family == "cnn":
        args["conv_channels"] = 2
    model = build_model(family, **plain_stats(64), num_classes=10, input_shape=DIGITS_SHAPE, **args)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == (3 if dropout > 0 else 0)
    assert all(d.p == dropout for d in dropouts)


def test_dropout_is_active_only_in_training() -> None:
    model = build_model(
        "mlp", **plain_stats(16), num_classes=4, hidden_layers=1, hidden_units=64, dropout=0.5
    )
    x = torch.randn(8, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_standardize_uses_training_statistics(digits: Dataset, digits_split: Split) -> None:
    train = digits.features[digits_split.train]
    mean, std = feature_stats(train)
    assert mean.shape == std.shape == (64,)
    assert mean.dtype == std.dtype == torch.float32
    model = build_model("mlp", mean=mean, std=std, num_classes=10)
    layer = model[0]
    assert isinstance(layer, Standardize)
    assert torch.equal(layer.mean, mean) and torch.equal(layer.std, std)
    # The statistics are buffers: saved with the model, never trained.
    assert {"0.mean", "0.std"} <= set(model.state_dict())
    assert "0.mean" not in dict(model.named_parameters())

    out = layer(torch.from_numpy(train)).double()
    constant = train.std(axis=0) == 0
    assert constant.any() and not constant.all()  # digits has always-blank corner pixels
    assert out.mean(dim=0).abs().max() < 1e-4
    assert torch.allclose(
        out.std(dim=0, unbiased=False)[~constant],
        torch.ones(int((~constant).sum()), dtype=torch.float64),
        atol=1e-4,
    )
    assert torch.equal(std[constant], torch.ones(int(constant.sum())))
    assert (out[:, constant] == 0).all()


def test_standardize_is_not_fitted_to_other_rows(digits: Dataset, digits_split: Split) -> None:
    mean, std = feature_stats(digits.features[digits_split.train])
    full_mean, _ = feature_stats(digits.features)
    assert not torch.equal(mean, full_mean)
    model = build_model("mlp", mean=mean, std=std, num_classes=10)
    test = torch.from_numpy(digits.features[digits_split.test])
    assert torch.allclose(model[0](test), (test - mean) / std)


def test_feature_stats_constant_feature_gets_std_one() -> None:
    rows = np.array([[1.0, 5.0, -2.0], [3.0, 5.0, -2.0], [5.0, 5.0, -2.0]], np.float32)
    mean, std = feature_stats(rows)
    assert torch.allclose(mean, torch.tensor([3.0, 5.0, -2.0]))
    assert torch.allclose(std, torch.tensor([float(np.std([1.0, 3.0, 5.0])), 1.0, 1.0]))
    out = Standardize(mean, std)(torch.from_numpy(rows))
    assert torch.equal(out[:, 1:], torch.zeros(3, 2))


def test_a_builder_that_returns_no_module_is_refused() -> None:
    spec = ModelSpec((4,), 2, ("a", "b"))
    with pytest.raises(TypeError, match=r"returned a dict, not a torch\.nn\.Module"):
        build_network(lambda spec: {}, spec, {}, **plain_stats(4))


@pytest.mark.parametrize(
    ("family", "args"),
    [
        *[("mlp", {"hidden_layers": 0, "activation": a}) for a in ACTIVATIONS],
        ("mlp", {"hidden_layers": 3, "hidden_units": 8, "dropout": 0.5, "activation": "gelu"}),
        ("cnn", {"conv_layers": 1, "kernel_size": 2, "hidden_layers": 0, "conv_channels": 2}),
        ("cnn", {"conv_layers": 4, "kernel_size": 7, "dropout": 0.3, "conv_channels": 2}),
    ],
)
def test_our_networks_export_for_the_ends_of_their_domains(
    family: str, args: dict[str, Any]
) -> None:
    """What lets the pre-flight (`checks.check_model`) skip exporting our own builders: their
    structural choices export (every activation, no hidden layer and the most, the smallest and
    largest convolution stacks, even kernels, dropout)."""
    model = build_model(
        family, **plain_stats(64), num_classes=10, input_shape=DIGITS_SHAPE, **args
    ).eval()
    loaded = load_exported(export_network(model, torch.randn(5, 64)))
    x = torch.randn(7, 64)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 300])
def test_the_exported_program_takes_any_number_of_rows(rows: int) -> None:
    model = build_model(
        "cnn", **plain_stats(64), num_classes=10, input_shape=DIGITS_SHAPE, conv_channels=2
    ).eval()
    program = export_network(model, torch.randn(5, 64))
    loaded = load_exported(program)
    x = torch.randn(rows, 64)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    # What crosses the wire is a graph of torch operations: none of our modules comes back.
    assert not any(isinstance(m, (Standardize, nn.Conv2d)) for m in loaded.modules())
