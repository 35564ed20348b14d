"""Benchmark: a big table, end to end. Writes a 50,000-row CSV of orders (three text columns of
5, 60 and 2,000 values, four number columns, 2% of two columns blank, an order id), times
loading it as a sweep does (read, categories, encoding; median of `--repeat`), then tunes it end
to end (`tune`: a regression of the order's value, ranked on val_rmse, gaps imputed, the order
id dropped) and prints the load time, the command's wall time and the driver's peak RSS (the
kernel's high-water mark, sampled every 0.2 s), with the registered model's test RMSE against
the order value's own standard deviation (what predicting the mean would score).

    .venv/bin/python benchmarks/tables.py [--rows N] [--trials N] [--epochs N] [--repeat N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from data import MIB, measured_tune

SPACE = """
name: bench-tables
task: regression
metric: val_rmse
data: {source: csv, path: orders.csv, target: value, drop_columns: [order], missing: impute}
budget: {num_samples: 4, max_concurrent: 2, max_epochs: 2}
params:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  hidden_units: {type: choice, values: [32, 64]}
  batch_size: 256
"""


def write_orders(path: Path, rows: int) -> float:
    """The orders table; the order value's standard deviation."""
    rng = np.random.default_rng(0)
    region = rng.choice([f"region-{i}" for i in range(5)], rows)
    category = rng.choice([f"category-{i:02d}" for i in range(60)], rows)
    store = rng.choice([f"store-{i:04d}" for i in range(2000)], rows)
    quantity = rng.integers(1, 20, rows)
    price = rng.lognormal(3, 0.5, rows)
    discount = rng.uniform(0, 0.3, rows)
    age = rng.integers(18, 80, rows).astype(float)
    effect = dict(zip(np.unique(category), rng.normal(0, 20, 60), strict=True))
    value = quantity * price * (1 - discount) + np.array([effect[c] for c in category])
    value += rng.normal(0, 10, rows)
    frame = pd.DataFrame(
        {
            "order": [f"o{i:06d}" for i in range(rows)],
            "region": region,
            "category": category,
            "store": store,
            "quantity": quantity,
            "price": price.round(2),
            "discount": discount.round(3),
            "age": age,
            "value": value.round(2),
        }
    )
    for column in ("price", "age"):
        frame.loc[rng.random(rows) < 0.02, column] = np.nan
    frame.to_csv(path, index=False)
    return float(frame["value"].std())


def load_seconds(space: Path, repeat: int) -> float:
    """Median seconds to load the table as a sweep does (read, encode, split)."""
    from pipeline.config import load_experiment
    from pipeline.core.sources import experiment_split

    experiment = load_experiment(space, [])
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        experiment_split(experiment, space.parent)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as scratch:
        folder = Path(scratch)
        spread = write_orders(folder / "orders.csv", args.rows)
        space = folder / "space.yaml"
        space.write_text(SPACE)
        size = (folder / "orders.csv").stat().st_size / MIB
        loading = load_seconds(space, args.repeat)
        peaks = measured_tune(space, [], folder, trials=args.trials, epochs=args.epochs)
    rmse = re.search(r"test_rmse ([0-9.]+)", peaks.output)
    print(f"orders table: {args.rows} rows, {size:.1f} MiB, 3 text columns (5, 60, 2000 values)")
    print(f"  load (read, encode, split): {loading:.2f} s, median of {args.repeat}")
    print(
        f"  tune ({args.trials} trials of {args.epochs} epochs, retrain, register): "
        f"{peaks.seconds:.1f} s; driver peak RSS {peaks.driver / MIB:.0f} MiB, a trial "
        f"worker's {peaks.worker / MIB:.0f} MiB"
    )
    if rmse:
        print(f"  test_rmse {float(rmse[1]):.2f} (the order value's std: {spread:.2f})")


if __name__ == "__main__":
    main()
