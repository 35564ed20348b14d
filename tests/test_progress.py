"""The sweep's progress display, fed trial events as Ray's callback hands them over."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
from rich.console import Console

from pipeline.cli.progress import SweepProgress, format_duration
from tests.conftest import cli_env, free_port


def log_console() -> tuple[Console, io.StringIO]:
    """A console writing to a log (not a terminal), as under cron or in CI."""
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def epoch(number: int, val_acc: float, **extra: object) -> dict[str, object]:
    return {"epoch": number, "val_acc": val_acc, "val_loss": 1.0 - val_acc, **extra}


def test_status_counts_states_running_best_and_eta() -> None:
    console, _ = log_console()
    progress = SweepProgress(console, every=3600)
    progress.begin(4, "val_acc", "max")
    for number, trial in enumerate(("a", "b", "c"), start=1):
        progress.start(trial, number, {})
    progress.result("a", epoch(1, 0.50))
    progress.result("a", epoch(2, 0.80))
    progress.result("b", epoch(1, 0.90))
    progress.result("c", epoch(1, 0.99, diverged=True))  # never the best
    progress.end("a", "completed", None)
    progress.end("c", "diverged", None)
    line = progress.status_line()
    assert line.startswith("trials 2/4 ended (1 completed, 1 diverged) · 1 running · ")
    assert "best val_acc 0.9000 (t02, epoch 1)" in line
    assert "ETA " in line
    progress.close()


def test_lower_is_better_when_the_metric_is_a_loss() -> None:
    console, _ = log_console()
    progress = SweepProgress(console, every=3600)
    progress.begin(2, "val_loss", "min")
    progress.start("a", 1, {})
    progress.result("a", {"epoch": 1, "val_loss": 0.4})
    progress.result("a", {"epoch": 2, "val_loss": 0.6})
    progress.start("b", 2, {})
    progress.result("b", {"epoch": 1, "val_loss": 0.45})
    assert "best val_loss 0.4500 (t02, epoch 1)" in progress.status_line()  # a's: 0.5
    progress.close()


def test_an_ended_trial_is_one_line_with_its_best_and_last_epoch() -> None:
    console, out = log_console()
    progress = SweepProgress(console, every=3600)
    progress.begin(3, "val_acc", "max")
    progress.start("a", 7, {})
    # Scored as the sweep ranks trials: each epoch the mean of the five centred on it.
    for number, score in enumerate((0.5, 0.6, 0.9, 0.95, 0.9, 0.7, 0.8), start=1):
        progress.result("a", epoch(number, score))
    progress.end("a", "completed", None)
    progress.start("b", 8, {})
    progress.result("b", epoch(1, 0.3))
    progress.end("b", "stopped", None)
    progress.start("c", 9, {})
    progress.end("c", "errored", "OSError: [Errno 28] No space left on device")
    lines = out.getvalue().splitlines()
    assert lines == [
        "t07 completed: best val_acc 0.8500 at epoch 5 (last 0.8000 at epoch 7)",
        "t08 stopped: best val_acc 0.3000 at epoch 1",
        "t09 errored: OSError: [Errno 28] No space left on device",
    ]
    progress.close()


def test_in_a_log_a_status_line_comes_every_interval_and_once_at_the_end() -> None:
    console, out = log_console()
    progress = SweepProgress(console, every=0.05)
    progress.begin(2, "val_acc", "max")
    progress.start("a", 1, {})
    deadline = time.monotonic() + 10
    while out.getvalue().count("trials 0/2 ended") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.getvalue().count("trials 0/2 ended") >= 2  # the ticker's lines
    progress.end("a", "completed", None)
    progress.close()
    closed = out.getvalue()
    # The last line is the final status (the ticker may have printed it once before the close).
    assert closed.splitlines()[-1].startswith("trials 1/2 ended (1 completed)")
    progress.close()
    assert out.getvalue() == closed, "a second close prints nothing more"


def test_on_a_terminal_the_status_is_redrawn_not_appended() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    progress = SweepProgress(console, every=3600)
    progress.begin(1, "val_acc", "max")
    assert progress._live is not None and progress._live.is_started
    progress.start("a", 1, {})
    progress.end("a", "completed", None)
    progress.close()
    assert progress._live is None


def test_durations_read_as_clock_times() -> None:
    assert format_duration(9.4) == "0:09"
    assert format_duration(754) == "12:34"
    assert format_duration(3725) == "1:02:05"


def test_a_resumed_run_counts_the_sweeps_trials_each_once() -> None:
    """A resumed sweep's run is told of the trials that had ended before it (settled); a trial
    restarted under a new id is a new trial, and the errored one it replaces is not counted
    again: what the last line says is the sweep's, as its runs record it."""
    console, _ = log_console()
    progress = SweepProgress(console, every=3600)
    progress.begin(4, "val_acc", "max")  # the resume: two trials ended before the kill
    progress.settled("a", 1, "completed")
    progress.settled("b", 2, "stopped")
    progress.start("c", 3, {})
    progress.end("c", "errored", "ValueError: Could not recover from checkpoint")
    line = progress.status_line()
    assert line.startswith("trials 3/4 ended (1 completed, 1 stopped, 1 errored) · 0 running")
    progress.close()
    # c restarts from its first epoch as c2: a second run, told of what Ray restored.
    progress.begin(4, "val_acc", "max")
    for trial, number in (("a", 1), ("b", 2)):
        progress.settled(trial, number, "completed" if trial == "a" else "stopped")
    for trial, number in (("c2", 3), ("d", 4)):
        progress.start(trial, number, {})
        progress.result(trial, epoch(1, 0.9))
        progress.end(trial, "completed", None)
    progress.end("d", "completed", None)  # told twice, counted once
    assert progress.status_line().startswith("trials 4/4 ended (3 completed, 1 stopped) · ")
    progress.close()


# A request to a port nothing listens on, retried as MLflow's client retries a tracking server.
RETRIED_REQUEST = """
import sys
from rich.console import Console
from pipeline.cli.environment import configure
configure(Console(stderr=True, width=200), debug=False, verbose=sys.argv[1] == "verbose")
import urllib3
pool = urllib3.PoolManager(retries=urllib3.Retry(total=2, backoff_factor=0))
try:
    pool.request("GET", f"http://127.0.0.1:{sys.argv[2]}/api/2.0/mlflow/runs/log-batch")
except urllib3.exceptions.MaxRetryError:
    print("gave up after its retries")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_retries_of_an_unreachable_server_print_nothing_unless_verbose(mode: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RETRIED_REQUEST, mode, str(free_port())],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "gave up after its retries", done.stderr
    assert done.stderr.count("Retrying (Retry(total=") == (2 if mode == "verbose" else 0)
