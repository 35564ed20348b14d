"""What the commands print: the sweep summary, a registration, a registry decision, a
prediction. Results go to stdout; the CLI's progress and errors go to stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.evaluate import TestReport
    from pipeline.registry import Decision
    from pipeline.workflows.serving import ExportedRows, Prediction
    from pipeline.workflows.tuning import Registration, SweepResult

SHOWN_PARAMS = ("optimizer", "lr", "hidden_layers", "hidden_units", "activation", "batch_size")


def results() -> Console:
    """The console for results: stdout, at most 120 columns when it is not a terminal."""
    return Console(width=None if sys.stdout.isatty() else 120)


def format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_sweep(result: SweepResult, top: int = 5) -> None:
    """The best trials, the trial states, timings and where the runs are."""
    table, metric = result.table, result.metric
    out = results()
    if not table.empty and metric in table:
        ascending = metric != "val_acc"
        ranked = table.sort_values(metric, ascending=ascending, na_position="last").head(top)
        shown = Table(title=f"best {min(top, len(ranked))} of {len(table)} trials")
        columns = ["trial_id", "state", metric, "epoch"] + [c for c in SHOWN_PARAMS if c in ranked]
        for column in columns:
            shown.add_column(column, no_wrap=True)
        for _, row in ranked.iterrows():
            shown.add_row(*(format_cell(row.get(c)) for c in columns))
        out.print(shown)
    states = table["state"].value_counts().to_dict() if not table.empty else {}
    out.print(f"trials: {', '.join(f'{n} {s}' for s, n in states.items())}")
    out.print(
        f"wall time {result.wall_seconds:.1f} s; MLflow writes {result.tracking_seconds:.2f} s"
    )
    if result.best is None:
        out.print("[red]no trial finished without diverging or failing[/red]")
    out.print(f"experiment: {result.experiment_name}   parent run: {result.parent_run_id}")
    out.print("browse the runs: make ui  (http://127.0.0.1:5000)")


def print_resume_hint(space: Path, experiment_name: str) -> None:
    """How to continue an interrupted sweep (on stderr, with the interruption)."""
    Console(stderr=True).print(
        f"sweep interrupted; continue it with: python -m pipeline tune --space {space} "
        f"--experiment {experiment_name} --resume"
    )


def print_registration(registration: Registration) -> None:
    from pipeline.registry import CHALLENGER  # loaded already: the command registered a model

    out = results()
    report = registration.report
    out.print(
        f"retrained trial {registration.trial_id}: {registration.metric} "
        f"{registration.trial_score:.4f} in the sweep; test_acc {report.test_acc:.4f}, test_loss "
        f"{report.test_loss:.4f} on {registration.test_rows} held-out rows"
    )
    out.print(
        f"registered {registration.model_name} version {registration.version} as "
        f"'{CHALLENGER}'; next: make promote"
    )


def describe_report(report: TestReport) -> str:
    return (
        f"test_acc {report.test_acc:.4f}, test_loss {report.test_loss:.4f}, "
        f"macro F1 {report.macro_f1:.4f}"
    )


def print_decision(decision: Decision) -> None:
    from pipeline.registry import CHAMPION  # loaded already: the command made the decision

    out = results()
    if decision.action == "kept":
        out.print(
            f"{decision.model}: version {decision.candidate} NOT promoted; champion stays "
            f"version {decision.champion_before}"
        )
    else:
        before = decision.champion_before or "none"
        out.print(
            f"{decision.model}: version {decision.champion_after} is now {CHAMPION} "
            f"({decision.action}; was {before})"
        )
    for role, version, report in (
        ("candidate", decision.candidate, decision.candidate_report),
        ("champion", decision.champion_before, decision.champion_report),
    ):
        if report is not None:
            out.print(f"  {role:9} v{version}: {describe_report(report)}")
    out.print(f"  reason: {decision.reason}")


def print_prediction(prediction: Prediction) -> None:
    out = results()
    out.print(
        f"{prediction.model} version {prediction.version}: {prediction.rows} predictions "
        f"written to {prediction.output}"
    )
    if prediction.accuracy is not None:
        logged = prediction.logged_test_acc
        against = f" (logged test_acc {logged:.4f})" if logged is not None else ""
        out.print(f"accuracy {prediction.accuracy:.4f} on {prediction.rows} labelled rows{against}")


def print_exported(exported: ExportedRows) -> None:
    results().print(f"{exported.rows} test rows of {exported.dataset} written to {exported.output}")
