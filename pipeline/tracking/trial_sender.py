"""The trial writer's own process, for a sweep of many trials (see `spool.SenderProcess` and
`trials.TrialRecorder`): `python -m pipeline.tracking.trial_sender`, told what to send on stdin."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from pipeline.tracking.spool import Spool, Write, serve_sender
from pipeline.tracking.store import open_client
from pipeline.tracking.trials import TrialWriter


def trial_writer(setup: dict[str, Any], spool: Spool) -> Callable[[Write], None]:
    """What sends each write of the sweep's spool to its store."""
    return TrialWriter(open_client(setup["tracking_uri"]), spool.header()).deliver


if __name__ == "__main__":
    sys.exit(serve_sender(trial_writer))
