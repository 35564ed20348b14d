"""Benchmark: memory on the Dataset path. Tunes the image-folder example on a folder of the
digits written as PNG files (1,797 images) and on one ten times its size (17,970), and prints
the driver's and a trial worker's peak RSS for both, and their ratios.

The images are read on demand (`data.source: image_folder`): the driver reads each once to
check and fingerprint it and keeps only the labels; each trial's worker reads its batches
through a DataLoader. So ten times the images should cost the driver and the workers about the
same memory, not ten times as much.

    .venv/bin/python benchmarks/data.py [--trials N] [--epochs N] [--repeat N]

Peak RSS is the kernel's high-water mark of each process (VmHWM in /proc/PID/status), read
every 0.2 s for the driver and for every Ray worker process under the sweep's Ray session:
the driver's own, and the largest of the trial workers' (`ray::ImplicitFunc`). Each size is
tuned `--repeat` times; the medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digit_images"
MIB = 1024 * 1024


@dataclass
class Peaks:
    driver: int = 0  # bytes
    worker: int = 0
    seconds: float = 0.0
    output: str = ""  # what the command printed


def high_water_mark(pid: int) -> int:
    """The process's peak resident set size in bytes, or 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def trial_workers() -> list[int]:
    """Pids of Ray's trial worker processes (their title names the trainable's actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::ImplicitFunc"):
            pids.append(int(entry.name))
    return pids


def tune(images: Path, folder: Path, trials: int, epochs: int) -> Peaks:
    """One `tune` of the example on `images`; the peaks seen while it ran."""
    return measured_tune(
        EXAMPLE / "space.yaml",
        [f"data.path={images}", "name=bench-data"],
        folder,
        trials=trials,
        epochs=epochs,
    )


def measured_tune(
    space: Path, overrides: list[str], folder: Path, *, trials: int, epochs: int
) -> Peaks:
    """One `tune` of `space` (with `overrides`, `trials` of `epochs` each, FIFO) in `folder`;
    the peaks seen while it ran."""
    command = [sys.executable, "-m", "pipeline", "tune", "--space", str(space)]
    sets = [*overrides, f"budget.num_samples={trials}", f"budget.max_epochs={epochs}"]
    sets += ["scheduler.name=fifo", "search.n_initial_points=1"]
    command += [arg for override in sets for arg in ("--set", override)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    peaks = Peaks()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peaks.driver = max(peaks.driver, high_water_mark(process.pid))
            for pid in trial_workers():
                peaks.worker = max(peaks.worker, high_water_mark(pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    done.set()
    watcher.join()
    peaks.seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"tune of {space} failed:\n{output.decode()[-3000:]}")
    peaks.output = output.decode()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        root = Path(scratch)
        rows = []
        for copies in (1, 10):
            images = root / f"images-x{copies}"
            subprocess.run(
                [sys.executable, str(EXAMPLE / "prepare.py"), str(images), str(copies)],
                check=True,
                capture_output=True,
            )
            count = sum(1 for _ in images.rglob("*.png"))
            runs = []
            for i in range(args.repeat):
                folder = root / f"run-x{copies}-{i}"
                folder.mkdir()
                runs.append(tune(images, folder, args.trials, args.epochs))
            rows.append(
                (
                    copies,
                    count,
                    statistics.median(r.driver for r in runs) / MIB,
                    statistics.median(r.worker for r in runs) / MIB,
                    statistics.median(r.seconds for r in runs),
                )
            )
    print(
        f"image folder tuned with {args.trials} trials of {args.epochs} epochs, median of "
        f"{args.repeat}"
    )
    print(
        f"{'folder':>8} {'images':>7} {'driver peak RSS':>16} {'worker peak RSS':>16} {'wall':>7}"
    )
    for copies, count, driver, worker, seconds in rows:
        print(
            f"{'x' + str(copies):>8} {count:>7} {driver:>12.0f} MiB {worker:>12.0f} MiB "
            f"{seconds:>6.1f}s"
        )
    (_, small, d1, w1, _), (_, large, d10, w10, _) = rows
    print(f"ratio x10/x1: images {large / small:.1f}, driver {d10 / d1:.2f}, worker {w10 / w1:.2f}")


if __name__ == "__main__":
    main()
