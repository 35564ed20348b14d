"""Delivering what the spools kept: the writes a store that was away, or a killed driver, left
undelivered (`python -m pipeline sync`, and a resumed sweep before it goes on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError, StoreAway
from pipeline.settings import Settings
from pipeline.tracking.spool import Sender, Spool, spool_file, spools_of, store_name
from pipeline.tracking.store import open_client_waiting
from pipeline.tracking.trials import TrialWriter


@dataclass(frozen=True)
class Delivered:
    """What delivering a store's spools did."""

    store: str  # the store, as said to a person
    spools: int  # spools found
    writes: int  # writes the store accepted
    left: int  # writes still kept (the store stayed away)
    errors: list[str] = field(default_factory=list)  # writes the store refused
    kept: list[Path] = field(default_factory=list)  # the spools that still hold writes


def deliver_kept(
    tracking_uri: str, spool_dir: Path, *, outage_timeout: float, key: str | None = None
) -> Delivered:
    """Send every write kept for the store at `tracking_uri` (only sweep `key`'s, if given), in
    order, waiting for a store that is away up to `outage_timeout` seconds; each spool whose
    writes were all accepted is removed. Nothing kept: nothing is asked of the store."""
    spools = [s for s in spools_of(spool_dir, tracking_uri) if key is None or s.path.stem == key]
    waiting = [(spool, len(spool.pending())) for spool in spools]
    for spool, count in waiting:
        if count == 0:
            spool.remove()
    waiting = [(spool, count) for spool, count in waiting if count]
    if not waiting:
        return Delivered(store_name(tracking_uri), len(spools), 0, 0)
    try:
        client = open_client_waiting(tracking_uri, outage_timeout)
    except StoreAway as away:
        count = sum(n for _, n in waiting)
        where = ", ".join(str(spool.path) for spool, _ in waiting)
        raise StoreAway(f"{away}; {count} tracking writes stay kept in {where}") from None
    errors: list[str] = []
    delivered = left = 0
    kept: list[Path] = []
    for spool, count in waiting:
        writer = TrialWriter(client, spool.header())
        still = Sender(spool, writer.deliver, errors).finish(outage_timeout)
        delivered, left = delivered + count - still, left + still
        if still:
            kept.append(spool.path)
    return Delivered(store_name(tracking_uri), len(spools), delivered, left, errors, kept)


def kept_writes(settings: Settings, key: str) -> tuple[int, Path | None]:
    """How many writes of sweep `key` its spool still keeps (a store that stayed away), and
    the spool."""
    spool = Spool(spool_file(settings.spool_dir, settings.tracking_uri, key))
    kept = len(spool.pending())
    return kept, spool.path if kept else None


def deliver_kept_writes(settings: Settings, key: str | None = None) -> Delivered:
    """`deliver_kept` for the settings' store and spool folder: writes the store refused are an
    error, and so (`StoreAway`) is a store still away after `settings.outage_timeout`."""
    delivered = deliver_kept(
        settings.tracking_uri, settings.spool_dir, outage_timeout=settings.outage_timeout, key=key
    )
    if delivered.left:
        raise StoreAway(
            f"tracking store {delivered.store} is unreachable: {delivered.left} writes still "
            f"kept in {', '.join(str(path) for path in delivered.kept)}; try again once it is back"
        )
    if delivered.errors:
        raise PipelineError(
            f"tracking store {delivered.store} refused {len(delivered.errors)} kept writes, "
            f"first: {delivered.errors[0]}"
        )
    return delivered
