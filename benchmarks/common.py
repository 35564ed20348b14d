"""Small helpers the benchmark scripts share. Imports nothing heavy: benchmarks/peer.py runs its
Optuna side from a fresh process whose start-up is timed."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def passed(ok: bool) -> str:
    """A bar's verdict as printed next to it."""
    return "PASS" if ok else "MISS"
