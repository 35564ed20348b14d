"""The Ray Tune function trainable: a sampled config -> `train.fit`, one report per epoch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pipeline.config import Hyperparameters, flatten_sample
from pipeline.data import TuningData
from pipeline.train import EpochMetrics, fit

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares besides the data."""

    family: str
    max_epochs: int
    seed: int
    cpus: float


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def run_trial(config: dict[str, Any], data: TuningData, settings: TrialSettings) -> None:
    """Train one sampled configuration, reporting and checkpointing every epoch."""
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

    def report(metrics: EpochMetrics, state: dict[str, Any]) -> None:
        result = {**metrics.as_dict(), "device": str(device), "node_id": node_id}
        if not state:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    fit(settings.family, hp, data, settings.max_epochs, report, device, settings.seed, resume)
