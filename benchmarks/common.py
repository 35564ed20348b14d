"""Small helpers the benchmark scripts share. Imports nothing heavy: benchmarks/peer.py runs its
Optuna side from a fresh process whose start-up is timed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SlotUse:
    """How a sweep used its trial slots: `concurrent` slots for `wall_seconds`, of which the
    trials trained (or computed) for `train_seconds` in all."""

    trials: int
    wall_seconds: float
    train_seconds: float
    concurrent: int

    @property
    def efficiency(self) -> float:
        return self.train_seconds / (self.wall_seconds * self.concurrent)

    @property
    def overhead_per_trial(self) -> float:
        return (self.wall_seconds * self.concurrent - self.train_seconds) / self.trials


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def passed(ok: bool) -> str:
    """A bar's verdict as printed next to it."""
    return "PASS" if ok else "MISS"


def user_env(folder: Path) -> dict[str, str]:
    """A user's environment: no cluster or tracking server set; trial state under `folder`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PIPELINE_STORAGE"] = str(folder / "ray")
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    """Run a command to its end (stderr into stdout): its output and its seconds; a failure
    stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout[-4000:]}")
    return done.stdout, seconds
