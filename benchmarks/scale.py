"""Benchmark: a sweep of many one-epoch trials: the driver's bookkeeping per trial, MLflow's share
of the wall time and the driver's memory.

Runs one sweep through the real pipeline in this process (`pipeline.workflows.tuning.run_sweep`
with our MLflow `TrialRecorder`, as benchmarks/overhead.py does, so that the driver is measured),
with a SQLite MLflow store and Ray's trial storage in a fresh temporary folder:
search_spaces/default.yaml's MLP space on a stratified slice of digits (`data.limit`, default 300
rows; one split, no cross-validation), TRIALS trials (default 1,000) of one epoch each, FIFO, 2
trials at a time of 1 CPU each. The trials train for a fraction of a second, so what the sweep
costs beyond them is the bookkeeping of Ray, the searcher and MLflow.

Random search by default, so that the figures are the pipeline's bookkeeping rather than the
searcher's modelling: TPE models every earlier trial for each suggestion, a cost that grows with
the trials (several times longer per suggestion in the last tenth of 1,000 than in the first);
`--search tpe` measures it. Either way the searcher's own seconds in the driver (`suggest` and
`on_trial_complete`) are printed apart, with the mean suggestion time of the first and the last
tenth of the trials.

Printed, next to the bars:
- overhead per trial in slot-seconds: (wall x concurrent - the trials' summed `train_seconds`)
  / trials                                                                  goal <= 0.05
  and next to it, Ray Tune alone on the same shape (benchmarks/floor.py): the same trials, each
  keeping a core busy for the sweep's median epoch and doing nothing else
- MLflow's share of the wall time: the trial writer's seconds in MLflow calls
  (`SweepResult.tracking_seconds`) plus the driver's other MLflow calls (parent run, artifacts,
  closing runs; measured as benchmarks/overhead.py does), over the wall     goal <= 5%
- the driver's resident memory (VmRSS) before the sweep (Ray started, data loaded) and after it,
  and its peak (VmHWM)                                                      growth < 300 MB

    .venv/bin/python benchmarks/scale.py [--trials N] [--rows N] [--concurrent N]
        [--search random|tpe] [--writer auto|thread|process] [--keep] [--check]

`--writer thread` runs the trial writer as a thread of the driver, which the pipeline does below
`OWN_PROCESS_FROM_TRIALS` trials: the two ways compared on one shape.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import SlotUse, passed, positive
from floor import tune_floor
from overhead import (
    DriverMlflowClock,
    Figures,
    Resources,
    bench_folder,
    budget_overrides,
    configure_logging,
    figures,
    sweep_job,
    tracking_settings,
)

from pipeline.config import Experiment, load_experiment
from pipeline.core.sources import load_dataset
from pipeline.distributed.search import ConditionalHyperOptSearch
from pipeline.tracking import trials as trials_module
from pipeline.workflows.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
DEFAULT_TRIALS = 1000
DEFAULT_ROWS = 300
GOAL_OVERHEAD = 0.05  # slot-seconds per trial
GOAL_MLFLOW_SHARE = 0.05
GOAL_GROWTH_MB = 300.0


def scale_experiment(trials: int, rows: int, concurrent: int, search: str) -> Experiment:
    """default.yaml with one epoch per trial, FIFO, a slice of `rows` rows and one split."""
    overrides = [
        *budget_overrides(trials, 1, Resources(concurrent)),
        "name=bench-scale",
        f"data.limit={rows}",
        "data.cv_folds=null",
        f"search.algorithm={search}",
    ]
    return load_experiment(DEFAULT_SPACE, overrides)


def memory_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())

    def mb(key: str) -> float:
        return int(fields[key].split()[0]) / 1024  # given in kB

    return mb("VmRSS"), mb("VmHWM")


class SearcherClock:
    """Seconds the searcher spends in `suggest` (each call kept) and `on_trial_complete` while
    the block runs; the methods are patched on the class and restored after."""

    def __init__(self) -> None:
        self.suggest: list[float] = []
        self.complete = 0.0

    def _timed(self, method: Callable[..., Any], record: Callable[[float], None]) -> Any:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                record(time.perf_counter() - started)

        return timed

    def _add_complete(self, seconds: float) -> None:
        self.complete += seconds

    @contextmanager
    def timing(self) -> Iterator[SearcherClock]:
        cls = ConditionalHyperOptSearch
        saved = cls.suggest, cls.on_trial_complete
        cls.suggest = self._timed(cls.suggest, self.suggest.append)  # type: ignore[method-assign]
        cls.on_trial_complete = self._timed(  # type: ignore[method-assign]
            cls.on_trial_complete, self._add_complete
        )
        try:
            yield self
        finally:
            cls.suggest, cls.on_trial_complete = saved  # type: ignore[method-assign]

    @property
    def seconds(self) -> float:
        return sum(self.suggest) + self.complete


def mean_ms(seconds: list[float]) -> float:
    return 1000 * sum(seconds) / len(seconds) if seconds else 0.0


@contextmanager
def trial_writer(kind: str, trials: int) -> Iterator[str]:
    """The sweep's trial writer as asked (`auto`: as the pipeline picks it for `trials`; a
    `thread` of the driver; a `process` of its own), for the block; what it is."""
    picked = trials >= trials_module.OWN_PROCESS_FROM_TRIALS
    if kind == "auto":
        yield "process" if picked else "thread"
        return
    saved = trials_module.OWN_PROCESS_FROM_TRIALS
    trials_module.OWN_PROCESS_FROM_TRIALS = trials if kind == "process" else trials + 1
    try:
        yield kind
    finally:
        trials_module.OWN_PROCESS_FROM_TRIALS = saved


def report(
    result: Figures,
    floor: SlotUse,
    searcher: SearcherClock,
    *,
    search: str,
    writer: str,
    before: float,
    after: float,
    peak: float,
) -> bool:
    """Print the figures next to the bars; True when every bar is met."""
    overhead_ok = result.overhead_per_trial <= GOAL_OVERHEAD
    mlflow_ok = result.mlflow_share <= GOAL_MLFLOW_SHARE
    growth = after - before
    memory_ok = growth < GOAL_GROWTH_MB
    tenth = max(1, len(searcher.suggest) // 10)
    print(f"\n{result.trials} trials of 1 epoch, {result.concurrent} at a time, {search} search")
    print(f"  sweep wall time          {result.wall_seconds:9.1f} s")
    print(f"  trials' train + validate {result.train_seconds:9.1f} s")
    print(
        f"  overhead per trial       {result.overhead_per_trial:9.3f} slot-s   goal <= "
        f"{GOAL_OVERHEAD} {passed(overhead_ok)}"
    )
    print(
        f"    Ray Tune alone         {floor.overhead_per_trial:9.3f} slot-s   (the same trials "
        f"computing for {result.epoch_seconds:.3f} s each, nothing else: benchmarks/floor.py)"
    )
    print(
        f"  MLflow calls             {result.tracking_seconds:9.2f} s = {result.mlflow_share:6.2%}"
        f" of wall   goal <= {GOAL_MLFLOW_SHARE:.0%} {passed(mlflow_ok)}"
    )
    print(
        f"    trial writer           {result.writer_seconds:9.2f} s, of which its own CPU "
        f"{result.writer_cpu_seconds:.2f} s = "
        f"{result.writer_cpu_seconds / result.wall_seconds:.2%} of wall; "
        + ("a process of its own" if writer == "process" else "a thread of the driver")
    )
    print(f"    driver (runs, artifacts){result.driver_seconds:8.2f} s")
    print(
        f"  searcher (driver)        {searcher.seconds:9.2f} s = "
        f"{searcher.seconds / result.wall_seconds:6.2%} of wall; {len(searcher.suggest)} "
        f"suggestions, {mean_ms(searcher.suggest[:tenth]):.1f} ms each in the first tenth, "
        f"{mean_ms(searcher.suggest[-tenth:]):.1f} ms in the last"
    )
    print(
        f"  driver memory (RSS)      {before:9.0f} MB before, {after:.0f} MB after (+{growth:.0f}"
        f" MB), peak {peak:.0f} MB   goal growth < {GOAL_GROWTH_MB:.0f} MB {passed(memory_ok)}"
    )
    return overhead_ok and mlflow_ok and memory_ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--trials", type=positive, default=DEFAULT_TRIALS,
        help=f"trials in the sweep (default {DEFAULT_TRIALS})",
    )  # fmt: skip
    parser.add_argument(
        "--rows", type=positive, default=DEFAULT_ROWS,
        help=f"rows of digits kept, stratified (default {DEFAULT_ROWS})",
    )  # fmt: skip
    parser.add_argument(
        "--concurrent", type=positive, default=Resources().concurrent,
        help=f"trials at once (default {Resources().concurrent})",
    )  # fmt: skip
    parser.add_argument(
        "--search", choices=("random", "tpe"), default="random", help="searcher (default random)"
    )
    parser.add_argument(
        "--writer", choices=("auto", "thread", "process"), default="auto",
        help="the trial writer: as the pipeline picks it (a process of its own from "
        "OWN_PROCESS_FROM_TRIALS trials), or a thread of the driver, or a process (default auto)",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="exit 1 when a bar is missed")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (MLflow store, Ray state)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()  # as the CLI does: Tune's console reporter silent, Ray's chatter quiet
    experiment = scale_experiment(args.trials, args.rows, args.concurrent, args.search)
    with bench_folder("bench-scale-", args.keep) as workdir:
        dataset = load_dataset(
            experiment.data, experiment.seed, workdir / "data", task=experiment.task
        )
        job = sweep_job(experiment, dataset)
        before, _ = memory_mb()
        print(f"running {args.trials} trials ...", flush=True)
        with (
            DriverMlflowClock() as driver,
            SearcherClock().timing() as searcher,
            trial_writer(args.writer, args.trials) as writer,
        ):
            result = run_sweep(job, tracking_settings(workdir))
        after, peak = memory_mb()
        measured = figures(result, experiment, driver.seconds)
        print("running Ray Tune alone on the same shape ...", flush=True)
        floor = tune_floor(
            trials=args.trials,
            epochs=1,
            epoch_seconds=measured.epoch_seconds,
            concurrent=args.concurrent,
            cpus=experiment.resources.cpus,
            folder=workdir,
        )
    met = report(
        measured,
        floor,
        searcher,
        search=args.search,
        writer=writer,
        before=before,
        after=after,
        peak=peak,
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
