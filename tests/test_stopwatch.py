"""The stopwatch behind `tune`'s timings line."""

from __future__ import annotations

from pipeline.stopwatch import Stopwatch


def test_laps_book_the_time_since_the_previous_lap_and_a_repeated_phase_adds_up() -> None:
    times = iter([10.0, 12.0, 20.0, 21.5, 25.0])
    watch = Stopwatch(clock=lambda: next(times))
    for name in ("imports", "sweep", "report", "sweep"):
        watch.lap(name)
    assert watch.seconds == {"imports": 2.0, "sweep": 11.5, "report": 1.5}
    assert watch.line() == "timings: imports 2.0 s, sweep 11.5 s, report 1.5 s; total 15.0 s"
