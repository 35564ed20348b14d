"""Where a command's time goes: seconds per named phase, for the timing line `tune` ends with."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Stopwatch:
    """Laps of a command: each `lap(name)` books the seconds since the previous lap (or the
    start) to `name`. A phase booked twice (a resumed sweep's second fit) adds up."""

    clock: Callable[[], float] = time.perf_counter
    seconds: dict[str, float] = field(default_factory=dict)
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.clock()

    def lap(self, name: str) -> None:
        """End the phase `name` now."""
        now = self.clock()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def line(self) -> str:
        """One line, e.g. `timings: imports 2.1 s, ray start 4.0 s, ...; total 31.2 s`."""
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())
        return f"timings: {parts}; total {sum(self.seconds.values()):.1f} s"
