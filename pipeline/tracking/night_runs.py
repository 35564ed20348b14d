"""Nights in the tracking store: a night's run (its sweep's parent run, or a run recording a
night that did not sweep) found by its date tag."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import tags
from pipeline.tracking.store import Client


@dataclass(frozen=True, kw_only=True)
class NightRecord:
    """A night's run: the sweep's parent run, or a run recording a night that did not sweep."""

    run_id: str
    status: str  # the run's: RUNNING, FINISHED, KILLED, FAILED
    tags: dict[str, str]
    params: dict[str, str]  # a sweep's settings and its best (`runs.recorded_best`)
    start_time: int  # ms since the epoch

    @property
    def date(self) -> str:
        return self.tags.get(tags.NIGHT_DATE, "")

    @property
    def is_sweep(self) -> bool:
        return tags.SWEEP_PATH in self.tags

    @property
    def sweep_path(self) -> str:
        return self.tags.get(tags.SWEEP_PATH, "")


def night_records(
    client: Client, experiment_ids: list[str], query: str = "", limit: int = 200
) -> list[NightRecord]:
    """Runs tagged with a night date (and matching `query`, an MLflow filter), newest first."""
    found = client.search_runs(
        experiment_ids,
        filter_string=" and ".join(q for q in (f"tags.`{tags.NIGHT_DATE}` != ''", query) if q),
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        NightRecord(
            run_id=r.info.run_id,
            status=r.info.status,
            tags=dict(r.data.tags),
            params=dict(r.data.params),
            start_time=r.info.start_time,
        )
        for r in found
    ]


def experiment_ids(client: Client) -> list[str]:
    """Every active experiment's id."""
    return [str(e.experiment_id) for e in client.search_experiments(max_results=1000)]
