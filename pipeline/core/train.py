"""Plain PyTorch training of one configuration: no Ray, no MLflow.

`fit` trains one model per fold in lockstep and calls `report` once per epoch with the mean over
folds, so the same loop serves a single split, k-fold cross-validation and the final retrain.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from pipeline.config import Hyperparameters
from pipeline.config.metrics import VAL_PREFIX, Task, scores_of
from pipeline.core.data import (
    Dataset,
    ExampleSource,
    ModelSpec,
    Split,
    TableFit,
    TuningData,
    flat_example,
    tuning_data,
)
from pipeline.core.metrics import UserScores, all_scores
from pipeline.core.model import Builder, build_network

EVAL_BATCH = 8192
# Rows scored at once when examples are read on demand: such examples may be large (images), and
# a batch of them is held whole while it is scored.
READ_BATCH = 256


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """What one epoch reports: the training loss and the `val_<score>` of each score of the
    task (`config.metrics`), by the names used everywhere."""

    epoch: int
    train_loss: float
    scores: dict[str, float]  # val_loss, val_acc, ...: means over the folds
    train_seconds: float
    diverged: bool = False

    def as_dict(self) -> dict[str, Any]:
        flat = asdict(self)
        return {**flat.pop("scores"), **flat}


def diverged_scores(task: Task) -> dict[str, float]:
    """Stand-ins for the scores of a diverged run: finite (so ASHA's and TPE's arithmetic stays
    sane) and worse than anything a real run reports."""
    return {VAL_PREFIX + score.name: score.worst for score in scores_of(task)}


Report = Callable[[EpochMetrics, dict[str, Any]], None]


def make_optimizer(hp: Hyperparameters, params: Any) -> torch.optim.Optimizer:
    """The configured update rule; weight_decay is the L2 penalty (decoupled for AdamW)."""
    if hp.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "momentum":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=hp.lr, weight_decay=hp.weight_decay)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")


class Examples:
    """The rows a model trains and is scored on, as batches on one device: indexed from tensors
    in memory, or read on demand through a DataLoader from the examples' Dataset."""

    def __init__(
        self,
        features: np.ndarray | None,
        examples: ExampleSource | None,
        labels: np.ndarray,
        device: torch.device,
    ) -> None:
        self.device = device
        # A regression's targets train in float32, as its outputs are.
        floating = np.issubdtype(labels.dtype, np.floating)
        self.labels = as_tensor(labels.astype(np.float32) if floating else labels, device)
        self.features = None if features is None else as_tensor(features, device)
        self.examples = examples
        self.eval_batch = EVAL_BATCH if features is not None else READ_BATCH

    def batches(self, rows: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) of `rows` (on the CPU), `size` rows at a time, in their order."""
        chunks = torch.split(rows, size)
        if self.features is not None:
            for chunk in chunks:
                part = chunk.to(self.device, non_blocking=True)
                yield self.features[part], self.labels[part]
            return
        assert self.examples is not None
        source = self.examples
        loader = DataLoader(
            ItemView(source.dataset(), source.item_indices(np.arange(len(self.labels)))),
            batch_sampler=[chunk.tolist() for chunk in chunks],
            collate_fn=collate_rows,
            # Its own generator: a DataLoader draws a seed per pass, which would otherwise shift
            # the global stream that shuffles the next epoch.
            generator=torch.Generator(),
        )
        for chunk, features in zip(chunks, loader, strict=True):
            yield features.to(self.device), self.labels[chunk.to(self.device)]


class ItemView(TorchDataset[Any]):
    """Our rows of a loader's Dataset: row i is its item `items[i]`."""

    def __init__(self, dataset: Any, items: np.ndarray) -> None:
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, row: int) -> Any:
        return self.dataset[int(self.items[row])]


def collate_rows(items: list[Any]) -> torch.Tensor:
    """A batch of Dataset items as flat float32 feature rows."""
    return torch.from_numpy(np.stack([flat_example(item) for item in items]))


class FoldTrainer:
    """One model, its optimizer and its training rows, on one device."""

    def __init__(
        self,
        builder: Builder,
        hp: Hyperparameters,
        *,
        examples: Examples,
        train_rows: np.ndarray,
        spec: ModelSpec,
        stats: tuple[np.ndarray, np.ndarray],
        target: tuple[float, float] | None = None,
        table: TableFit | None = None,
        user: UserScores | None = None,
    ) -> None:
        """`stats`: the scaling statistics (mean, std) of `train_rows` (`data.column_stats`);
        `target`: for a regression, those of their targets (`data.target_stats`); `table`: for
        a table, what its rows hold (`data.fit_table`); `user`: the user's metrics function."""
        self.hp = hp
        self.user = user
        self.task = spec.task
        self.examples = examples
        self.train_rows = torch.as_tensor(train_rows)
        mean, std = torch.from_numpy(stats[0]), torch.from_numpy(stats[1])
        network = build_network(
            builder, spec, hp.builder_args, mean=mean, std=std, target=target, table=table
        )
        self.model = network.to(examples.device)
        self.optimizer = make_optimizer(hp, self.model.parameters())
        self.target_scale = target or (0.0, 1.0)
        self.loss_fn: nn.Module
        if self.task == "regression":
            # On standardized targets: the loss (and Huber's threshold of one std) means the
            # same whatever the target's units.
            self.loss_fn = nn.HuberLoss(delta=1.0) if hp.loss == "huber" else nn.MSELoss()
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            mean, std = self.target_scale
            outputs, labels = (outputs - mean) / std, (labels - mean) / std
        loss: torch.Tensor = self.loss_fn(outputs, labels)
        return loss

    def train_epoch(self) -> float:
        """One pass over the training rows in shuffled mini-batches; mean training loss."""
        self.model.train()
        n = len(self.train_rows)
        batch = n if self.hp.batch_size is None else min(self.hp.batch_size, n)
        order = self.train_rows[torch.randperm(n)]
        total = torch.zeros((), device=self.examples.device)
        for features, labels in self.examples.batches(order, batch):
            loss = self.training_loss(self.model(features), labels)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            self.optimizer.step()
            total += loss.detach() * len(labels)
        return float(total) / n  # one device sync per epoch, not per batch

    @torch.no_grad()
    def evaluate(self, rows: torch.Tensor) -> dict[str, float]:
        """Every score of the task on the given rows (`core.metrics`), by its `val_` name."""
        self.model.eval()
        outputs = []
        for features, _ in self.examples.batches(rows, self.examples.eval_batch):
            output = self.model(features)
            if self.task == "classification":
                output = torch.softmax(output.double(), dim=1)
            outputs.append(output)
        predicted = torch.cat(outputs).cpu().numpy()
        targets = self.examples.labels[rows.to(self.examples.device)].cpu().numpy()
        if self.task == "regression":
            targets = targets.astype(np.float64)
        scored = all_scores(self.task, predicted, targets, self.user)
        return {VAL_PREFIX + name: value for name, value in scored.items()}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """An array as a tensor on `device`, sharing memory with it on the CPU."""
    # Arrays from Ray's object store are read-only; training never writes to them, so sharing
    # them avoids a copy per trial (torch warns about non-writable arrays regardless).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


def fit(
    builder: Builder,
    hp: Hyperparameters,
    data: TuningData,
    *,
    max_epochs: int,
    report: Report,
    device: torch.device,
    seed: int,
    resume: dict[str, Any] | None = None,
    user: UserScores | None = None,
) -> None:
    """Train for `hp.epochs` (capped at `max_epochs`), reporting the mean over folds each epoch
    (of our scores and of the `user`'s metrics function's).

    A non-finite loss ends training: the epoch is reported as diverged with worst-case metrics.
    `resume` is a state passed to an earlier `report`; training continues after its epoch.
    """
    torch.manual_seed(seed)
    examples = Examples(data.features, data.examples, data.labels, device)
    trainers = [
        FoldTrainer(
            builder,
            hp,
            examples=examples,
            train_rows=train,
            spec=data.spec,
            stats=data.fold_stats[fold],
            target=data.target_stats[fold] if data.target_stats else None,
            table=data.table_fits[fold] if data.table_fits else None,
            user=user,
        )
        for fold, (train, _) in enumerate(data.folds)
    ]
    val_rows = [torch.as_tensor(val) for _, val in data.folds]
    first_epoch = 1
    if resume is not None:
        for trainer, state in zip(trainers, resume["folds"], strict=True):
            trainer.load_state(state)
        torch.set_rng_state(resume["rng"].cpu())
        first_epoch = int(resume["epoch"]) + 1
    epochs = hp.planned_epochs(max_epochs)
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        train_losses, fold_scores = [], []
        for trainer, rows in zip(trainers, val_rows, strict=True):
            train_losses.append(trainer.train_epoch())
            if not math.isfinite(train_losses[-1]):
                break
            fold_scores.append(trainer.evaluate(rows))
        seconds = time.perf_counter() - started
        names = fold_scores[0] if len(fold_scores) == len(trainers) else {}
        scores = {name: float(np.mean([f[name] for f in fold_scores])) for name in names}
        if not scores or not all(map(math.isfinite, scores.values())):
            worst = diverged_scores(data.spec.task)
            report(
                EpochMetrics(
                    epoch=epoch,
                    train_loss=worst[VAL_PREFIX + "loss"],
                    scores=worst,
                    train_seconds=seconds,
                    diverged=True,
                ),
                {},
            )
            return
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=float(np.mean(train_losses)),
            scores=scores,
            train_seconds=seconds,
        )
        state = {
            "epoch": epoch,
            "rng": torch.get_rng_state(),
            "folds": [t.state() for t in trainers],
        }
        report(metrics, state)


def fit_final(
    builder: Builder,
    hp: Hyperparameters,
    dataset: Dataset,
    *,
    train_rows: np.ndarray,
    epochs: int,
    device: torch.device,
    seed: int,
    shared_scale: bool,
) -> tuple[nn.Module, list[float]]:
    """Train one configuration on `train_rows` for exactly `epochs`, with no validation rows,
    scaled by their own statistics (`data.column_stats`, from a sample when the examples are
    read on demand).

    Returns the network in eval mode on the CPU and the training loss of each epoch; a non-finite
    loss stops training early (the caller sees the shorter, non-finite history).
    """
    torch.manual_seed(seed)
    whole = Split(
        train=train_rows,
        val=np.zeros(0, np.int64),
        test=np.zeros(0, np.int64),
        folds=((np.arange(len(train_rows)), np.zeros(0, np.int64)),),
        fingerprint="",
    )
    data = tuning_data(dataset, whole, shared_scale=shared_scale)
    trainer = FoldTrainer(
        builder,
        hp,
        examples=Examples(data.features, data.examples, data.labels, device),
        train_rows=np.arange(len(train_rows)),
        spec=data.spec,
        stats=data.fold_stats[0],
        target=data.target_stats[0] if data.target_stats else None,
        table=data.table_fits[0] if data.table_fits else None,
    )
    losses: list[float] = []
    for _ in range(epochs):
        losses.append(trainer.train_epoch())
        if not math.isfinite(losses[-1]):
            break
    return trainer.model.eval().cpu(), losses
