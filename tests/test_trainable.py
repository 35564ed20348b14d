"""The Ray trainable's own logic that needs no Ray runtime."""

from __future__ import annotations

from pipeline.distributed.trainable import CheckpointTimer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_checkpoint_is_due_only_once_its_interval_has_passed_since_the_last() -> None:
    clock = Clock()
    timer = CheckpointTimer(10.0, clock)
    clock.now += 9.9
    assert not timer.due(), "not before 10 s after the trial's start"
    clock.now += 0.1
    assert timer.due()
    timer.saved()
    clock.now += 5.0
    assert not timer.due(), "counted from the last checkpoint"
    clock.now += 5.0
    assert timer.due()


def test_zero_seconds_checkpoints_every_epoch() -> None:
    clock = Clock()
    timer = CheckpointTimer(0.0, clock)
    assert timer.due()
    timer.saved()
    assert timer.due()
