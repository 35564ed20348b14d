"""Our own networks, builders of the same contract as a user's (`config.door`): an MLP, and a
small CNN for images. Their keyword arguments are the hyperparameters a space may tune, each
annotated with its domain."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from torch import nn

from pipeline.config import Hyperparameter
from pipeline.core.data import ModelSpec

Activation = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]
ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
HiddenLayers = Annotated[
    int, Hyperparameter(kind=int, doc="hidden (fully connected) layers", low=0, high=16)
]
HiddenUnits = Annotated[
    int, Hyperparameter(kind=int, doc="units per hidden layer", low=1, high=8192)
]
Dropout = Annotated[
    float, Hyperparameter(kind=float, doc="dropout probability", low=0.0, high=1.0, high_open=True)
]
ConvLayers = Annotated[int, Hyperparameter(kind=int, doc="convolution blocks", low=1, high=4)]
ConvChannels = Annotated[
    int, Hyperparameter(kind=int, doc="channels of the first block", low=1, high=512)
]
KernelSize = Annotated[int, Hyperparameter(kind=int, doc="convolution kernel size", low=1, high=7)]


def dense_stack(
    inputs: int,
    outputs: int,
    *,
    hidden_layers: int,
    hidden_units: int,
    activation: str,
    dropout: float,
) -> list[nn.Module]:
    """hidden_layers x (Linear, activation, Dropout), then the output layer."""
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(inputs, hidden_units), ACTIVATION_LAYERS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        inputs = hidden_units
    layers.append(nn.Linear(inputs, outputs))
    return layers


def mlp(
    spec: ModelSpec,
    *,
    hidden_layers: HiddenLayers = 1,
    hidden_units: HiddenUnits = 128,
    activation: Activation = "relu",
    dropout: Dropout = 0.0,
) -> nn.Module:
    """A fully connected network on the flattened example."""
    dense = dense_stack(
        math.prod(spec.input_shape),
        spec.num_outputs,
        hidden_layers=hidden_layers,
        hidden_units=hidden_units,
        activation=activation,
        dropout=dropout,
    )
    return nn.Sequential(nn.Flatten(), *dense)


def cnn(
    spec: ModelSpec,
    *,
    conv_layers: ConvLayers = 2,
    conv_channels: ConvChannels = 16,
    kernel_size: KernelSize = 3,
    hidden_layers: HiddenLayers = 1,
    hidden_units: HiddenUnits = 128,
    activation: Activation = "relu",
    dropout: Dropout = 0.0,
) -> nn.Module:
    """conv_layers x (Conv2d doubling the channels, activation, 2x2 max-pool while the image
    allows), then the MLP's dense layers; for examples shaped (channels, height, width)."""
    if len(spec.input_shape) != 3:
        raise ValueError(
            f"cnn needs images shaped (channels, height, width); these examples are shaped "
            f"{tuple(spec.input_shape)}"
        )
    channels, height, width = spec.input_shape
    layers: list[nn.Module] = []
    for i in range(conv_layers):
        out = conv_channels * 2**i
        layers += [
            nn.Conv2d(channels, out, kernel_size, padding="same"),
            ACTIVATION_LAYERS[activation](),
        ]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    dense = dense_stack(
        channels * height * width,
        spec.num_outputs,
        hidden_layers=hidden_layers,
        hidden_units=hidden_units,
        activation=activation,
        dropout=dropout,
    )
    return nn.Sequential(*layers, nn.Flatten(), *dense)
