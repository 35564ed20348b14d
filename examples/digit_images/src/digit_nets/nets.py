"""A small CNN for images, written as a team would write its own: plain PyTorch, no import of
the pipeline. Every keyword argument is a hyperparameter the space may tune; the annotations
tell the pipeline which values are allowed (a Literal lists them, int refuses fractions)."""

from __future__ import annotations

from typing import Literal

from torch import nn


def build(
    spec,  # the pipeline's ModelSpec: input_shape, num_outputs, class_names, feature_names
    *,
    channels: int = 8,
    kernel_size: Literal[3, 5] = 3,
    blocks: Literal[1, 2] = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """`blocks` x (convolution, batch norm, ReLU, 2x2 max-pool), channels doubling per block,
    then global average pooling and a linear layer: logits shaped [batch, num_outputs]."""
    in_channels = spec.input_shape[0]
    layers: list[nn.Module] = []
    for block in range(blocks):
        out = channels * 2**block
        layers += [
            nn.Conv2d(in_channels, out, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        in_channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    layers.append(nn.Linear(in_channels, spec.num_outputs))
    return nn.Sequential(*layers)
