"""Benchmark: how much of a sweep's wall time the trials spend training, and what MLflow costs.

Runs two fixed sweeps through the real pipeline (`pipeline.workflows.tuning.run_sweep`: Ray Tune,
HyperOpt, our MLflow `TrialRecorder`), with a SQLite MLflow store and Ray's trial storage in a
fresh temporary folder, FIFO scheduling (every trial trains all its epochs), 2 concurrent trials
of 1 CPU each:

- realistic: an MLP on a generated MNIST-shaped data set (60,000 x 784 float32, 10 classes of
  noisy random prototypes), 5 epochs per trial;
- tiny: the digits MLP of search_spaces/default.yaml, 10 epochs per trial.

For each sweep it prints the sweep's wall seconds, the trials' own training-and-validation
seconds (summed `train_seconds`, measured inside the trials around each epoch's training and
validation), the efficiency (those seconds / (wall seconds x concurrent trials)), the overhead
per trial in seconds ((wall x concurrent - those seconds) / trials) and the share of wall time
spent in MLflow calls: by the trial writer (a thread of the driver's, or, from 100 trials, a
process of its own), and by the driver's other threads (the experiment, the parent run, its
artifacts, closing runs), next to the goals: efficiency >= 0.92
(realistic) / 0.70 (tiny), MLflow share <= 3%. For the tiny sweep it also runs Ray Tune alone on
the same shape (benchmarks/floor.py) and prints its overhead per trial and efficiency: the floor
Ray's own per-trial costs set on this machine. Logging and Tune's console output are set up as
the CLI sets them up (`environment.configure`).

    .venv/bin/python benchmarks/overhead.py [--only realistic|tiny] [--trials N] [--repeat N]
        [--concurrent N] [--cpus N] [--gpus FRACTION]

With --gpus (e.g. 0.125: eight trials share one GPU) the trials train on the GPU; the report adds
the median epoch time, to set against a CPU run of the same sweep.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from common import SlotUse, positive
from floor import tune_floor
from mlflow.tracking import MlflowClient
from rich.console import Console

from pipeline.cli import environment
from pipeline.config import Experiment, load_experiment, parse_experiment
from pipeline.core.data import Dataset, split_dataset
from pipeline.core.sources import load_dataset
from pipeline.distributed import cluster
from pipeline.settings import Settings
from pipeline.tracking.spool import SENDER_THREAD
from pipeline.tracking.store import open_client
from pipeline.workflows.sweep import SweepJob, SweepResult, run_sweep

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
SWEEPS = ("realistic", "tiny")
GOAL_EFFICIENCY = {"realistic": 0.92, "tiny": 0.70}
GOAL_MLFLOW_SHARE = 0.03
# Ray Tune alone is run on these sweeps' shape too; the realistic sweep's trials train for
# minutes, which a floor of the same shape would add again.
FLOOR_SWEEPS = ("tiny",)
DEFAULT_TRIALS = 32
MAX_CONCURRENT = 2

# MNIST's shape: 60,000 rows of 28 x 28 pixels, 10 classes.
ROWS, SIDE, CLASSES = 60_000, 28, 10
PROTOTYPES_PER_CLASS = 4  # each class a mixture of blobs, so that depth can help a little
PROTOTYPE_SCALE = 0.12  # distance between blobs relative to unit noise: learnable, not trivial

# A space sized for 60k rows: an epoch is about a second on one core.
BATCH_SIZES = [128, 256, 512]
REALISTIC_PARAMS: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "hidden_layers": {"type": "int", "low": 1, "high": 2},
    "hidden_units": {"type": "choice", "values": [64, 128, 256]},
    "activation": {"type": "choice", "values": ["relu", "tanh", "gelu"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "weight_decay": {"type": "float", "low": 1.0e-7, "high": 1.0e-3, "log": True},
    "optimizer": {
        "type": "choice",
        "values": [
            {"name": "adam", "batch_size": {"type": "choice", "values": BATCH_SIZES}},
            {"name": "adamw", "batch_size": {"type": "choice", "values": BATCH_SIZES}},
            {
                "name": "momentum",
                "momentum": {"type": "float", "low": 0.5, "high": 0.95},
                "batch_size": {"type": "choice", "values": BATCH_SIZES},
            },
        ],
    },
}


@dataclass(frozen=True)
class Resources:
    """How many trials run at once and what each one gets."""

    concurrent: int = MAX_CONCURRENT
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Figures(SlotUse):
    """What one sweep measured."""

    # train_seconds: training and validation, inside the trials
    writer_seconds: float  # MLflow calls of the trial writer (its thread, or its process)
    writer_cpu_seconds: float  # of them, the thread's own CPU (the rest waits: store, GIL)
    driver_seconds: float  # MLflow calls of the driver's other threads
    epochs: int  # per trial (FIFO: every trial trains them all)
    epoch_seconds: float  # median over trials of training seconds per epoch
    devices: str

    @property
    def tracking_seconds(self) -> float:
        return self.writer_seconds + self.driver_seconds

    @property
    def mlflow_share(self) -> float:
        return self.tracking_seconds / self.wall_seconds


class DriverMlflowClock:
    """Seconds the driver's threads other than the trial writer's sender (which counts its own)
    spend inside MlflowClient calls, outermost calls only; every public method is timed while
    the block runs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = threading.local()
        self._saved: dict[str, Any] = {}

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == SENDER_THREAD:
                return method(*args, **kwargs)
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.value = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - started

        return timed

    def __enter__(self) -> DriverMlflowClock:
        for name, member in vars(MlflowClient).items():
            if callable(member) and not name.startswith("_"):
                self._saved[name] = member
                setattr(MlflowClient, name, self._timed(member))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, member in self._saved.items():
            setattr(MlflowClient, name, member)


# --- the two sweeps -----------------------------------------------------------------------------


def budget_overrides(trials: int, max_epochs: int, resources: Resources) -> list[str]:
    """Budget, FIFO and concurrency settings shared by both sweeps, as `--set` overrides."""
    overrides = [
        f"budget.num_samples={trials}",
        f"budget.max_epochs={max_epochs}",
        f"budget.max_concurrent={resources.concurrent}",
        "scheduler.name=fifo",
        "scheduler.grace_period=1",
        f"resources.cpus={resources.cpus}",
        f"resources.gpus={resources.gpus}",
    ]
    if trials < 2:  # TPE needs at least one random trial before it and one after
        return [*overrides, "search.algorithm=random"]
    return [*overrides, f"search.n_initial_points={max(1, min(8, trials // 4))}"]


def realistic_experiment(trials: int, resources: Resources) -> Experiment:
    """The default space's settings with the benchmark's budget and a space sized for 60k rows."""
    base = load_experiment(DEFAULT_SPACE, budget_overrides(trials, 5, resources))
    raw = base.model_dump(mode="json", exclude={"params"})
    raw.update(
        name="bench-realistic",
        description="MLP on MNIST-shaped synthetic blobs",
        registered_model=None,
        params=REALISTIC_PARAMS,
    )
    raw["data"].update(source="mnist", limit=None, cv_folds=None)
    return parse_experiment(raw, "benchmarks/overhead.py (realistic)")


def synthetic_mnist(seed: int) -> Dataset:
    """60,000 x 784 float32 rows: each class a few random prototypes, each row one plus noise."""
    rng = np.random.default_rng(seed)
    features_per_row = SIDE * SIDE
    prototypes = (
        rng.standard_normal((CLASSES * PROTOTYPES_PER_CLASS, features_per_row), dtype=np.float32)
        * PROTOTYPE_SCALE
    )
    labels = rng.integers(0, CLASSES, ROWS, dtype=np.int64)
    blob = labels * PROTOTYPES_PER_CLASS + rng.integers(0, PROTOTYPES_PER_CLASS, ROWS)
    features = rng.standard_normal((ROWS, features_per_row), dtype=np.float32)
    features += prototypes[blob]
    return Dataset(
        name="synthetic-mnist",
        features=features,
        labels=labels,
        class_names=tuple(str(c) for c in range(CLASSES)),
        input_shape=(1, SIDE, SIDE),
    )


def tiny_experiment(trials: int, resources: Resources) -> Experiment:
    """The default digits MLP with the benchmark's budget (one split, as before CV was default)."""
    overrides = [*budget_overrides(trials, 10, resources), "name=bench-tiny", "data.cv_folds=null"]
    return load_experiment(DEFAULT_SPACE, overrides)


def prepare(
    name: str, trials: int, resources: Resources, workdir: Path
) -> tuple[Experiment, Dataset]:
    """The sweep's experiment and its data set (built or loaded here, outside the timing)."""
    if name == "realistic":
        experiment = realistic_experiment(trials, resources)
        return experiment, synthetic_mnist(experiment.seed)
    experiment = tiny_experiment(trials, resources)
    return experiment, load_dataset(
        experiment.data, experiment.seed, workdir / "data", task=experiment.task
    )


def run_one(name: str, trials: int, resources: Resources, workdir: Path) -> Figures:
    """One sweep through `run_sweep`; the figures come from its result."""
    experiment, dataset = prepare(name, trials, resources, workdir)
    with DriverMlflowClock() as driver:
        result = run_sweep(sweep_job(experiment, dataset), tracking_settings(workdir))
    return figures(result, experiment, driver.seconds)


def sweep_job(experiment: Experiment, dataset: Dataset) -> SweepJob:
    """The benchmark's experiment on `dataset`, split as a sweep splits it; its space file is
    the experiment written back as YAML."""
    split = split_dataset(dataset, experiment.data, experiment.seed)
    space_text = yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False)
    return SweepJob(
        experiment=experiment,
        experiment_name=experiment.name,
        dataset=dataset,
        split=split,
        space_text=space_text,
    )


def figures(result: SweepResult, experiment: Experiment, driver_seconds: float) -> Figures:
    trials = result.trials
    states = Counter(t.state for t in trials)
    if states["completed"] != len(trials):
        print(
            f"  note: trial states {dict(states)} (FIFO should complete every trial)",
            file=sys.stderr,
        )
    per_epoch = [t.train_seconds / max(t.epochs_trained, 1) for t in trials]
    return Figures(
        trials=len(trials),
        wall_seconds=result.wall_seconds,
        train_seconds=sum(t.train_seconds for t in trials),
        writer_seconds=result.tracking_seconds,
        writer_cpu_seconds=result.tracking_cpu_seconds,
        driver_seconds=driver_seconds,
        concurrent=experiment.budget.max_concurrent,
        epochs=experiment.budget.max_epochs,
        epoch_seconds=float(np.median(per_epoch)) if per_epoch else 0.0,
        devices=", ".join(sorted({t.device for t in trials if t.device})),
    )


def tracking_settings(workdir: Path) -> Settings:
    return Settings(
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        artifact_root=workdir / "artifacts",
        storage=str(workdir / "ray"),
        data_dir=workdir / "data",
    )


def init_store(workdir: Path) -> float:
    """Create the SQLite store (schema migrations) before timing: a one-off, not a sweep's cost."""
    started = time.perf_counter()
    open_client(tracking_settings(workdir).tracking_uri).search_experiments()
    return time.perf_counter() - started


# --- report -------------------------------------------------------------------------------------


def median_figures(runs: list[Figures]) -> dict[str, float]:
    """Each figure's median over the repeats."""
    keys: dict[str, Callable[[Figures], float]] = {
        "wall": lambda f: f.wall_seconds,
        "train": lambda f: f.train_seconds,
        "efficiency": lambda f: f.efficiency,
        "overhead": lambda f: f.overhead_per_trial,
        "mlflow": lambda f: f.tracking_seconds,
        "writer": lambda f: f.writer_seconds,
        "writer_cpu": lambda f: f.writer_cpu_seconds,
        "driver": lambda f: f.driver_seconds,
        "mlflow_share": lambda f: f.mlflow_share,
        "epoch": lambda f: f.epoch_seconds,
    }
    return {key: statistics.median(get(f) for f in runs) for key, get in keys.items()}


def floor_of(runs: list[Figures], cpus: float, workdir: Path) -> SlotUse:
    """Ray Tune alone on a sweep's shape, its epochs as long as the sweep's median epoch."""
    first = runs[0]
    return tune_floor(
        trials=first.trials,
        epochs=first.epochs,
        epoch_seconds=statistics.median(f.epoch_seconds for f in runs),
        concurrent=first.concurrent,
        cpus=cpus,
        folder=workdir,
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(name: str, runs: list[Figures], floor: SlotUse | None = None) -> bool:
    """Print one sweep's figures (medians over repeats), and Ray Tune's own on its shape when
    measured; True when both goals are met."""
    m = median_figures(runs)
    first = runs[0]
    goal = GOAL_EFFICIENCY[name]
    efficiency_ok = m["efficiency"] >= goal
    mlflow_ok = m["mlflow_share"] <= GOAL_MLFLOW_SHARE
    suffix = f" (median of {len(runs)})" if len(runs) > 1 else ""
    print(f"\n{name}: {first.trials} trials, {first.concurrent} concurrent{suffix}")
    print(f"  sweep wall time          {m['wall']:9.1f} s")
    print(f"  trials' train + validate {m['train']:9.1f} s")
    print(
        f"  efficiency               {m['efficiency']:9.3f}    goal >= {goal:.2f}  "
        f"{verdict(efficiency_ok)}"
    )
    print(f"  overhead per trial       {m['overhead']:9.2f} s")
    if floor is not None:
        print(
            f"    Ray Tune alone         {floor.overhead_per_trial:9.2f} s    efficiency "
            f"{floor.efficiency:.3f} (the same trials computing for the median epoch, nothing "
            "else: benchmarks/floor.py)"
        )
    print(f"  median epoch (per trial) {m['epoch']:9.3f} s    on {first.devices}")
    print(
        f"  MLflow calls             {m['mlflow']:9.2f} s = {m['mlflow_share']:6.2%} of wall"
        f"    goal <= {GOAL_MLFLOW_SHARE:.0%}  {verdict(mlflow_ok)}"
    )
    print(
        f"    trial writer           {m['writer']:9.2f} s, of which its own CPU "
        f"{m['writer_cpu']:.2f} s = {m['writer_cpu'] / m['wall']:.2%} of wall"
    )
    print(f"    driver (runs, artifacts){m['driver']:8.2f} s")
    if len(runs) > 1:
        for i, f in enumerate(runs, 1):
            print(
                f"    run {i}: wall {f.wall_seconds:.1f} s, train+validate "
                f"{f.train_seconds:.1f} s, efficiency {f.efficiency:.3f}, "
                f"MLflow {f.mlflow_share:.2%}"
            )
    return efficiency_ok and mlflow_ok


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=SWEEPS, help="run only this sweep")
    parser.add_argument(
        "--trials",
        type=positive,
        default=DEFAULT_TRIALS,
        help=f"trials per sweep (default {DEFAULT_TRIALS})",
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="run each sweep N times and report the medians (default 1)",
    )
    parser.add_argument(
        "--concurrent",
        type=positive,
        default=MAX_CONCURRENT,
        help=f"trials at once (default {MAX_CONCURRENT})",
    )
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per trial (default 1)")
    parser.add_argument(
        "--gpus", type=float, default=0.0, help="GPU share per trial, e.g. 0.125 (default 0)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a goal is missed"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (MLflow store, Ray trial state)",
    )
    return parser.parse_args(argv)


def configure_logging() -> None:
    """As the CLI does (Tune's console output off, Ray's chatter quiet), and no INFO lines."""
    environment.configure(Console(stderr=True), debug=False)
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextmanager
def bench_folder(prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary folder holding an MLflow store, with a local Ray started (neither
    counted in a sweep's figures); afterwards Ray stops and the folder goes, unless `keep`."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        print(f"MLflow store and Ray trial state in {workdir}")
        print(f"MLflow store created in {init_store(workdir):.1f} s (not counted)")
        started = time.perf_counter()
        cluster.connect(None)
        print(f"Ray started in {time.perf_counter() - started:.1f} s (not counted)")
        yield workdir
    finally:
        ray.shutdown()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    names = [args.only] if args.only else list(SWEEPS)
    results: dict[str, list[Figures]] = {name: [] for name in names}
    with bench_folder("bench-overhead-", args.keep) as workdir:
        for repeat in range(args.repeat):
            for name in names:
                label = f" (run {repeat + 1} of {args.repeat})" if args.repeat > 1 else ""
                print(f"running the {name} sweep{label} ...", flush=True)
                resources = Resources(args.concurrent, args.cpus, args.gpus)
                results[name].append(run_one(name, args.trials, resources, workdir))
        floors: dict[str, SlotUse] = {}
        for name in FLOOR_SWEEPS if not args.gpus else ():  # the floor computes on the CPU
            if name in results:
                print(f"running Ray Tune alone on the {name} sweep's shape ...", flush=True)
                floors[name] = floor_of(results[name], args.cpus, workdir)
    met = [report(name, runs, floors.get(name)) for name, runs in results.items()]
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
