"""Networks built from a trial's hyperparameters: an MLP, and a small CNN for image data."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import Hyperparameters

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


class Standardize(nn.Module):
    """(x - mean) / std with statistics of the training rows, kept inside the model for serving."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def dense_stack(inputs: int, hp: Hyperparameters, num_classes: int) -> list[nn.Module]:
    """hidden_layers x (Linear, activation, Dropout), then the output layer."""
    layers: list[nn.Module] = []
    for _ in range(hp.hidden_layers):
        layers += [nn.Linear(inputs, hp.hidden_units), ACTIVATION_LAYERS[hp.activation]()]
        if hp.dropout > 0:
            layers.append(nn.Dropout(hp.dropout))
        inputs = hp.hidden_units
    layers.append(nn.Linear(inputs, num_classes))
    return layers


def conv_stack(
    image_shape: tuple[int, int, int], hp: Hyperparameters
) -> tuple[list[nn.Module], int]:
    """conv_layers x (Conv2d, activation, 2x2 max-pool while the image allows); flat output size."""
    channels, height, width = image_shape
    layers: list[nn.Module] = [nn.Unflatten(1, image_shape)]
    for i in range(hp.conv_layers):
        out = hp.conv_channels * 2**i
        layers += [
            nn.Conv2d(channels, out, hp.kernel_size, padding="same"),
            ACTIVATION_LAYERS[hp.activation](),
        ]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    layers.append(nn.Flatten())
    return layers, channels * height * width


def build_model(
    family: str,
    hp: Hyperparameters,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    num_classes: int,
    image_shape: tuple[int, int, int] | None,
) -> nn.Sequential:
    """The network for one configuration; its input is raw flattened features, its output logits."""
    layers: list[nn.Module] = [Standardize(mean, std)]
    inputs = int(mean.numel())
    if family == "cnn":
        if image_shape is None:
            raise ValueError("model family cnn needs image data (this data set has no image shape)")
        conv, inputs = conv_stack(image_shape, hp)
        layers += conv
    layers += dense_stack(inputs, hp, num_classes)
    return nn.Sequential(*layers)


def with_probabilities(network: nn.Module) -> nn.Sequential:
    """The network followed by a softmax: what is logged and served returns class probabilities."""
    return nn.Sequential(network, nn.Softmax(dim=1))
