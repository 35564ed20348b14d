"""Ray Tune's own floor under a benchmark's sweep: the same trials, epochs per trial and
concurrency on the Ray this process has joined, each epoch keeping one core busy for as long as
the sweep's median epoch trained, and nothing of the pipeline (no torch, no data, no searcher
model, no tracking, no callbacks). Its overhead per trial is what Ray Tune alone costs on this
machine: where a sweep's overhead sits above it, the pipeline adds the difference; where a bar
sits below it, no change of ours can meet it on this machine."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from common import SlotUse
from ray import tune

from pipeline.distributed.tuner import tune_settings

BLOCK = bytes(1 << 20)  # hashed over and over: one core busy, the GIL released (as torch's kernels)


def compute_for(seconds: float) -> None:
    """Keep one core busy for `seconds`."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        hashlib.sha256(BLOCK).digest()


def floor_trial(config: dict[str, Any]) -> None:
    for epoch in range(config["epochs"]):
        compute_for(config["epoch_seconds"])
        tune.report({"epoch": epoch})


def tune_floor(
    *, trials: int, epochs: int, epoch_seconds: float, concurrent: int, cpus: float, folder: Path
) -> SlotUse:
    """Run the bare sweep (reused actors, Tune's default random search over nothing, FIFO, our
    Tune settings) with its state under `folder`, and time it."""
    tuner = tune.Tuner(
        tune.with_resources(floor_trial, {"cpu": cpus}),
        param_space={"epochs": epochs, "epoch_seconds": epoch_seconds},
        tune_config=tune.TuneConfig(
            num_samples=trials, max_concurrent_trials=concurrent, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(folder / "tune-floor"), verbose=0),
    )
    with tune_settings():
        started = time.perf_counter()
        tuner.fit()
        wall = time.perf_counter() - started
    return SlotUse(trials, wall, trials * epochs * epoch_seconds, concurrent)
