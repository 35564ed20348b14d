"""A residual MLP for tables: plain PyTorch, no import of the pipeline. Every keyword argument
is a hyperparameter the space may tune."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Residual(nn.Module):
    """x + f(x): a block the network can learn to skip."""

    def __init__(self, width: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build(
    spec,  # the pipeline's ModelSpec: input_shape, num_outputs, class_names, feature_names
    *,
    width: int = 64,
    blocks: int = 2,
    activation: Literal["relu", "gelu", "silu"] = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """Flatten, project to `width`, `blocks` residual blocks, then one logit per class."""
    inputs = math.prod(spec.input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, width),
        *(Residual(width, activation, dropout) for _ in range(blocks)),
        nn.Linear(width, spec.num_outputs),
    )
