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

from pipeline.core.data import ModelSpec, TableFit, TableLayout

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


class TableInputs(nn.Module):
    """A table's encoded rows (numbers and category codes, gaps NaN) as the builder's inputs:
    gaps filled, numbers standardized, each category one-hot or embedded (`TableLayout`), all
    with what the model's own training rows hold (`TableFit`). A category value those rows lack,
    or that the file's vocabulary lacked (the unknown code), becomes zeros: it moves nothing."""

    fill: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    numbers: torch.Tensor

    def __init__(self, layout: TableLayout, fit: TableFit) -> None:
        super().__init__()
        self.imputes = layout.imputes
        self.register_buffer("fill", torch.from_numpy(fit.fill))
        self.register_buffer("mean", torch.from_numpy(fit.mean))
        self.register_buffer("std", torch.from_numpy(fit.std))
        numbers = [i for i, c in enumerate(layout.columns) if c.categories is None]
        self.register_buffer("numbers", torch.tensor(numbers, dtype=torch.long))
        self.categories: list[tuple[int, int, bool]] = []  # (column, values, one-hot)
        self.embeddings = nn.ModuleDict()
        for index, seen in zip(layout.category_columns, fit.seen, strict=True):
            count = len(seen)
            one_hot = count <= layout.one_hot_max
            # code -> itself where training rows hold it, else `count` (unknown: zeros)
            known = torch.where(torch.from_numpy(seen), torch.arange(count), count)
            self.register_buffer(f"known_{index}", torch.cat([known, torch.tensor([count])]))
            if not one_hot:
                width = layout.embedding_size(count)
                self.embeddings[str(index)] = nn.Embedding(count + 1, width, padding_idx=count)
            self.categories.append((index, count, one_hot))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.imputes:
            x = torch.where(torch.isnan(x), self.fill, x)
        parts = [(x[:, self.numbers] - self.mean[self.numbers]) / self.std[self.numbers]]
        for index, count, one_hot in self.categories:
            known: torch.Tensor = getattr(self, f"known_{index}")
            codes = known[x[:, index].long().clamp(0, count)]
            if one_hot:
                values = torch.arange(count, device=x.device)
                parts.append((codes.unsqueeze(1) == values).to(x.dtype))
            else:
                parts.append(self.embeddings[str(index)](codes))
        return torch.cat(parts, dim=1)


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
    table: TableFit | None = None,
) -> nn.Sequential:
    """The network for one configuration: flat raw rows in (a table's encoded, with its `table`
    fit); out, the builder's logits or, for a regression (`target`: the training targets' mean
    and std), one prediction per row in the target's units."""
    module = builder(spec, **builder_args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the builder returned a {type(module).__name__}, not a torch.nn.Module")
    layers: list[nn.Module] = [Standardize(mean, std)]
    if spec.table is not None:
        assert table is not None, "a table's network needs its training rows' fit"
        layers = [TableInputs(spec.table, table)]
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
