"""Benchmark: how long the commands that need no Ray take, start to exit, from a fresh process.

Builds a local store with the default space's model (`digits-mlp`, two small sweeps of
search_spaces/default.yaml: version 1 promoted to champion, version 2 the challenger), then
times each command REPEAT times (default 5) and prints the medians against the goals:

- `python -m pipeline --help`                                   goal <= 1 s
- `python -m pipeline promote --model digits-mlp --min-delta 1`  goal <= 4 s (re-scores both
  versions on the test split; min_delta 1 keeps the champion, so every run does the same work)
- `python -m pipeline rollback` (after forcing version 2 in) and `predict` (the champion on its
  exported test rows), for reference;
- promote's floor: a bare interpreter that imports what promote cannot do without (MLflow,
  torch with its pt2 loader, scikit-learn's splitter) and opens the store, doing nothing else.

    .venv/bin/python benchmarks/cli.py [--repeat N] [--store DIR] [--code DIR] [--keep] [--check]

--store reuses a folder whose mlruns/ already holds digits-mlp with a champion and a challenger
(e.g. after `make tune && make promote && make tune`); --code times another checkout's CLI (for
a before/after comparison), with this one's environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
MODEL = "digits-mlp"
GOALS = {"--help": 1.0, "promote": 4.0}
# Two quick sweeps of the default space: the same data and network family, fewer trials.
SMALL_SWEEP = [
    "--set", "budget.num_samples=4",
    "--set", "search.n_initial_points=2",
    "--set", "budget.max_epochs=6",
    "--set", "scheduler.grace_period=2",
]  # fmt: skip


# What promote cannot do without, and nothing else: its lower bound on this machine.
PROMOTE_FLOOR = f"""
import mlflow, sklearn.model_selection, torch
from torch.export.pt2_archive import _package
from pathlib import Path
from mlflow.tracking import MlflowClient
MlflowClient(f"sqlite:///{{Path('mlruns/mlflow.db').resolve()}}").get_registered_model({MODEL!r})
"""


def run(folder: Path, code: Path, *args: str) -> float:
    """Seconds `python -m pipeline ARGS` took in `folder`; a failure stops the benchmark."""
    return run_python(folder, code, "-m", "pipeline", *args)


def run_python(folder: Path, code: Path, *args: str) -> float:
    """Seconds `python ARGS` took in `folder`, with `code` first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(code)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`python {' '.join(args)}` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return seconds


def build_store(folder: Path) -> None:
    """digits-mlp version 1 as champion, version 2 as challenger, in folder/mlruns."""
    print(f"building the store in {folder} (two small sweeps of the default space) ...")
    started = time.perf_counter()
    space = ["--space", str(DEFAULT_SPACE)]
    run(folder, ROOT, "tune", *space, *SMALL_SWEEP)
    run(folder, ROOT, "promote", "--model", MODEL)
    run(folder, ROOT, "tune", *space, *SMALL_SWEEP, "--set", "seed=1")
    print(f"built in {time.perf_counter() - started:.0f} s (not counted)")


def commands(folder: Path) -> list[tuple[str, list[str], list[str] | None]]:
    """(name, arguments, arguments of an untimed step to run first) of each timed command."""
    rows = str(folder / "test-rows.csv")
    return [
        ("--help", ["--help"], None),
        ("promote", ["promote", "--model", MODEL, "--min-delta", "1"], None),
        # Version 2 forced in gives rollback a previous champion; each rollback swaps the two.
        ("rollback", ["rollback", "--model", MODEL], ["promote", "--model", MODEL, "--force"]),
        (
            "predict",
            ["predict", "--model", MODEL, "--input", rows, "--output", rows + ".out"],
            None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--store", type=Path, help="a folder whose mlruns/ to use as it is")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose CLI to time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    folder = args.store or Path(tempfile.mkdtemp(prefix="bench-cli-"))
    code = args.code.resolve()
    try:
        if args.store is None:
            build_store(folder)
        run(folder, code, "export-test-rows", "--model", MODEL, "--output", "test-rows.csv")
        print(f"timing {code}'s CLI, {args.repeat} runs each, on {os.cpu_count()} CPUs")
        print(f"{'command':10} {'median':>8} {'min':>7} {'max':>7}   goal")
        floor = [run_python(folder, code, "-c", PROMOTE_FLOOR) for _ in range(args.repeat)]
        print(f"{'(floor)':10} {statistics.median(floor):7.2f}s {min(floor):6.2f}s "
              f"{max(floor):6.2f}s   promote's imports and store, nothing else")  # fmt: skip
        met = True
        for name, arguments, first in commands(folder):
            if first is not None:
                run(folder, code, *first)
            seconds = [run(folder, code, *arguments) for _ in range(args.repeat)]
            median = statistics.median(seconds)
            goal = GOALS.get(name)
            verdict = ""
            if goal is not None:
                ok = median <= goal
                met &= ok
                verdict = f"<= {goal:.0f} s  {'ok' if ok else 'MISSED'}"
            print(f"{name:10} {median:7.2f}s {min(seconds):6.2f}s {max(seconds):6.2f}s   {verdict}")
    finally:
        if args.store is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif args.store is None:
            print(f"kept {folder}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
