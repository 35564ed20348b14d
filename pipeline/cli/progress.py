"""The live progress of a sweep: trials ended (by state) out of the budget, trials running, the
best so far, elapsed time and an ETA. On a terminal a status line redrawn once a second; in a log
(CI, cron) a plain line every `every` seconds. One line per ended trial either way."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.config import Scalar
from pipeline.core.decisions import best_epoch
from pipeline.core.trials import trial_label

STATE_ORDER = ("completed", "stopped", "diverged", "errored")


@dataclass(kw_only=True)
class TrialProgress:
    """What the display knows of one trial: its number, best and last epoch."""

    number: int
    best_score: float = math.nan  # scored as the sweep ranks trials (`decisions.best_epoch`)
    best_epoch: int = 0
    last_score: float = math.nan
    last_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SweepProgress:
    """A watcher of a sweep's trial events (see `pipeline.distributed.tuner.fit`) that shows its
    progress on `console`."""

    def __init__(self, console: Console, every: float = 10.0) -> None:
        self.console = console
        self.every = every
        self.total = 0
        self.metric = "val_acc"
        self.mode = "max"
        self.trials: dict[str, TrialProgress] = {}
        self.running: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> the state it ended in
        self.before = 0  # of them, trials that had ended before this run of the sweep
        self.best: tuple[float, str, int] | None = None  # score, trial id, epoch
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- the sweep's events -------------------------------------------------------------------

    def begin(self, total: int, metric: str, mode: str) -> None:
        """A run of the sweep starts: `total` trials planned, ranked on `metric` (`mode` max or
        min). A resumed sweep's earlier trials are told as `settled`."""
        with self._lock:
            self.trials, self.running, self.ended, self.best = {}, set(), {}, None
            self.before = 0
        self.total, self.metric, self.mode = total, metric, mode
        self.started = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=1, transient=True)
            self._live.start()
        else:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def settled(self, trial_id: str, number: int, state: str) -> None:
        with self._lock:
            self.trials.setdefault(trial_id, TrialProgress(number=number))
            self.ended[trial_id] = state
            self.before += 1

    def start(self, trial_id: str, number: int, params: dict[str, Scalar]) -> None:
        with self._lock:
            self.trials.setdefault(trial_id, TrialProgress(number=number))
            self.running.add(trial_id)

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        score, epoch = float(result.get(self.metric, math.nan)), int(result.get("epoch", 0))
        with self._lock:
            trial = self.trials.setdefault(trial_id, TrialProgress(number=0))
            trial.last_score, trial.last_epoch = score, epoch
            if result.get("diverged") or math.isnan(score):
                return
            trial.history.append({"epoch": float(epoch), self.metric: score})
            # A trial's score at an epoch averages the epochs around it, so it moves as later
            # epochs come in: the best so far is taken again over every trial.
            best = best_epoch(trial.history, self.metric, self.mode)
            if best is not None:
                trial.best_score, trial.best_epoch = best[self.metric], int(best["epoch"])
            scored = [(t.best_score, i, t.best_epoch) for i, t in self.trials.items()]
            scored = [s for s in scored if not math.isnan(s[0])]
            self.best = min(scored, key=lambda s: -s[0] if self.mode == "max" else s[0])

    def end(self, trial_id: str, state: str, error: str | None) -> None:
        with self._lock:
            self.running.discard(trial_id)
            self.ended[trial_id] = state
            trial = self.trials.setdefault(trial_id, TrialProgress(number=0))
        self.console.print(
            self.describe_trial(trial, state, error), highlight=False, soft_wrap=True
        )

    def close(self) -> None:
        """The sweep ended (or was stopped): stop redrawing, leave the last status as a line."""
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.total:
            self.console.print(self.status_line(), highlight=False, soft_wrap=True)
            self.total = 0  # closed: a second close prints nothing

    # --- what is shown ------------------------------------------------------------------------

    def describe_trial(self, trial: TrialProgress, state: str, error: str | None) -> str:
        """One line for an ended trial: its best epoch and, if later, its last one."""
        head = f"{trial_label(trial.number)} {state}"
        if error is not None:
            return f"{head}: {error}"
        if math.isnan(trial.best_score):
            return f"{head} at epoch {trial.last_epoch}"
        line = f"{head}: best {self.metric} {trial.best_score:.4f} at epoch {trial.best_epoch}"
        if trial.last_epoch != trial.best_epoch:
            line += f" (last {trial.last_score:.4f} at epoch {trial.last_epoch})"
        return line

    def status_line(self) -> str:
        """Trials ended by state out of the budget, running, best so far, elapsed and ETA."""
        return " · ".join(self.status_parts())

    def status_parts(self) -> list[str]:
        with self._lock:
            counts = Counter(self.ended.values())
            ended, now = len(self.ended), len(self.ended) - self.before
            states = ", ".join(f"{counts[s]} {s}" for s in STATE_ORDER if counts[s])
            running = len(self.running)
            best = self.best
            number = self.trials[best[1]].number if best else 0
        elapsed = time.monotonic() - self.started
        parts = [f"trials {ended}/{self.total} ended" + (f" ({states})" if states else "")]
        parts.append(f"{running} running")
        if best is not None:
            label = trial_label(number)
            parts.append(f"best {self.metric} {best[0]:.4f} ({label}, epoch {best[2]})")
        parts.append(f"{format_duration(elapsed)} elapsed")
        if now > 0 and ended < self.total:  # at this run's own pace
            parts.append(f"ETA {format_duration(elapsed / now * (self.total - ended))}")
        return parts

    def __rich__(self) -> RenderableType:
        """Two lines on a terminal: a bar with the trial counts, then the best and the times."""
        ended = len(self.ended)
        parts = self.status_parts()
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            ProgressBar(total=max(self.total, 1), completed=ended, width=16),
            Text(" · ".join(parts[:2])),
        )
        grid.add_row("", Text(" · ".join(parts[2:])))
        return grid

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.console.print(self.status_line(), highlight=False, soft_wrap=True)
