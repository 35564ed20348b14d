"""The record of nightly reruns: what a night's runs are tagged with, a night as they record it,
and the history of a model's nights. Reading them needs no Ray."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import tags
from pipeline.settings import Settings
from pipeline.tracking import night_runs
from pipeline.tracking.night_runs import NightRecord
from pipeline.tracking.store import open_client

# Outcomes of a night; the first three end it for good (running that date again does nothing).
FINAL_OUTCOMES = ("promoted", "kept", "no-valid-trial")
OUTCOMES = (*FINAL_OUTCOMES, "failed", "skipped-locked")
# Exit codes of `nightly`, for schedulers (documented in the README).
EXIT_NO_VALID_TRIAL = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another night of the space is running; try later


@dataclass(frozen=True, kw_only=True)
class Night:
    """A night as recorded on its run: what it did, or why it did not."""

    date: str
    model: str
    outcome: str  # one of OUTCOMES, or `running` / `interrupted` for a night not over
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    best_score: float | None = None
    already_done: bool = False  # found finished: this run did nothing
    warnings: tuple[str, ...] = ()

    def tag(self, key: str) -> str | None:
        return self.tags.get(key) or None

    @property
    def exit_code(self) -> int:
        return {"no-valid-trial": EXIT_NO_VALID_TRIAL, "skipped-locked": EXIT_LOCKED}.get(
            self.outcome, 0
        )


def night_of(record: NightRecord, already_done: bool = False) -> Night:
    """A night as its run records it."""
    outcome = record.tags.get(tags.NIGHT_OUTCOME) or {"RUNNING": "running"}.get(
        record.status, "interrupted"
    )
    best = record.tags.get(tags.NIGHT_BEST)
    return Night(
        date=record.date,
        model=record.tags.get(tags.NIGHT_MODEL, ""),
        outcome=outcome,
        run_id=record.run_id,
        tags=record.tags,
        best_score=float(best) if best else None,
        already_done=already_done,
    )


def history(settings: Settings, model: str, nights: int = 14) -> list[Night]:
    """The model's last nights, newest first (every attempt: skipped and failed ones too)."""
    client = open_client(settings.tracking_uri)
    records = night_runs.night_records(
        client, night_runs.experiment_ids(client), f"tags.`{tags.NIGHT_MODEL}` = '{model}'", nights
    )
    return [night_of(r) for r in records]
