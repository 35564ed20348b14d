"""The Ray Tune function trainable: a sampled config -> `train.fit`, one report per epoch."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pipeline.config import Hyperparameters, flatten_sample
from pipeline.config.door import import_callable
from pipeline.config.metrics import Mode, score_of
from pipeline.core.data import TuningData
from pipeline.core.decisions import best_epoch
from pipeline.core.train import EpochMetrics, fit

STATE_FILE = "state.pt"


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """What every trial of a sweep shares besides the data."""

    builder: str  # module:function, shipped with the job (`cluster.connect`)
    max_epochs: int
    seed: int
    cpus: float
    checkpoint_seconds: float  # budget.checkpoint_seconds
    metric: str  # what the sweep ranks trials on, and `mode`, max or min
    mode: Mode
    metrics: str | None = None  # the user's metrics function, shipped with the job


@dataclass
class CheckpointTimer:
    """When a trial's next checkpoint is due: `seconds` after its previous one, or its start."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    saved_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.saved_at = self.clock()

    def due(self) -> bool:
        return self.clock() - self.saved_at >= self.seconds

    def saved(self) -> None:
        self.saved_at = self.clock()


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def run_trial(config: dict[str, Any], data: TuningData, settings: TrialSettings) -> None:
    """Train one sampled configuration, reporting every epoch and checkpointing once
    `settings.checkpoint_seconds` have passed since the trial's previous checkpoint (or start).

    Each epoch's result also carries `best_<metric>`, the trial's best score so far as the sweep
    ranks trials (`decisions.best_epoch`), which the searcher learns from: a trial's last epoch
    may be past its best (an overfitting network), and it is its best that the sweep keeps.
    """
    # Keep Ray's INFO line per checkpoint out of the user's terminal.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    hp = Hyperparameters.from_params(flatten_sample(config))
    # Match torch's intra-op threads to the CPUs Ray reserved, so concurrent trials do not thrash.
    torch.set_num_threads(max(1, int(settings.cpus)))
    device = trial_device()
    node_id = ray.get_runtime_context().get_node_id()  # tells apart nodes sharing a host
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)

    timer = CheckpointTimer(settings.checkpoint_seconds)
    # The epochs so far, for the trial's best score so far: what the searcher learns from.
    history: list[dict[str, float]] = list(resume.get("history", [])) if resume else []
    best_name = f"best_{settings.metric}"
    worst = score_of(settings.metric, settings.mode).worst

    def report(metrics: EpochMetrics, state: dict[str, Any]) -> None:
        result = {**metrics.as_dict(), "device": str(device), "node_id": node_id}
        # A diverged epoch carries the worst of our scores only: the user's is worst too.
        score = float(metrics.scores.get(settings.metric, worst))
        result.setdefault(settings.metric, score)
        if not metrics.diverged:  # a diverged trial tells the searcher its worst-case score
            history.append({"epoch": float(metrics.epoch), settings.metric: score})
            best = best_epoch(history, settings.metric, settings.mode)
            score = best[settings.metric] if best else score
        result[best_name] = score
        if not state or not timer.due():
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save({**state, "history": history}, Path(folder) / STATE_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        timer.saved()

    fit(
        import_callable(settings.builder, (), "model.builder"),
        hp,
        data,
        max_epochs=settings.max_epochs,
        report=report,
        device=device,
        seed=settings.seed,
        resume=resume,
        user=None if settings.metrics is None else import_callable(settings.metrics, (), "metrics"),
    )
