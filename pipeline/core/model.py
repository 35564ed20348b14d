"""A trial's network: the builder's module (ours or the user's) behind the scaling of its inputs.

Inside the pipeline an example is one flat row of float32 features; the network standardizes
it with statistics of its own training rows, reshapes it to the example's `input_shape` and
hands it to the builder's module, so that scaling travels with the model and what is served
takes flat rows whatever the builder expects.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import torch
from torch import nn

from pipeline.core.data import ModelSpec

Builder = Callable[..., nn.Module]


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


class Unstandardize(nn.Module):
    """A regression's output back in the target's units: y * std + mean, with the statistics of
    the training rows' targets, which the builder's module learns standardized."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1) * self.std + self.mean


def build_network(
    builder: Builder,
    spec: ModelSpec,
    builder_args: Mapping[str, Any],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    target: tuple[float, float] | None = None,
) -> nn.Sequential:
    """The network for one configuration: flat raw rows in; out, the builder's logits or, for a
    regression (`target`: the training targets' mean and std), one prediction per row in the
    target's units."""
    module = builder(spec, **builder_args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the builder returned a {type(module).__name__}, not a torch.nn.Module")
    layers: list[nn.Module] = [Standardize(mean, std)]
    if len(spec.input_shape) > 1:
        layers.append(nn.Unflatten(1, spec.input_shape))
    layers.append(module)
    if target is not None:
        layers.append(Unstandardize(*target))
    return nn.Sequential(*layers)


def servable(network: nn.Module, spec: ModelSpec) -> nn.Module:
    """What is logged and served: a classifier followed by a softmax (class probabilities), a
    regression as it is (predictions in the target's units)."""
    if spec.task == "regression":
        return network
    return nn.Sequential(network, nn.Softmax(dim=1))


def export_network(network: nn.Module, example: torch.Tensor) -> bytes:
    """The network as a saved `torch.export` program taking any number of rows: what crosses
    the wire and the registry, never the builder's classes."""
    network = network.eval()
    batch = torch.export.Dim("batch")
    # Its tracer prints the graph it could not trace; the exception says why, and is enough.
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def load_exported(program: bytes) -> nn.Module:
    """A saved exported program as a module that runs it (no builder code needed)."""
    module: nn.Module = torch.export.load(io.BytesIO(program)).module()
    return module
