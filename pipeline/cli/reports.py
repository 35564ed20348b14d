"""Commands that look back at sweeps: a sweep's report, and the list of an experiment's
sweeps. Neither needs Ray."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import display
from pipeline.cli.app import app, guarded
from pipeline.cli.environment import settings

Experiment = Annotated[str, typer.Option(help="MLflow experiment of the sweeps.")]


class Format(str, Enum):
    """How `sweeps` prints: a table for people, CSV or JSON for scripts."""

    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def report(
    experiment: Experiment,
    parent_run: Annotated[
        str | None,
        typer.Option(help="The sweep's parent run id (default: the latest finished sweep)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Also write the HTML page (pictures inside) here.")
    ] = None,
) -> None:
    """Draw a sweep's report: one self-contained HTML page, and its pictures as PNGs.

    Optimization history, hyperparameters against the score, their importance, learning curves
    and trial states, logged to the sweep's parent run under report/.
    """
    with guarded():
        from pipeline.workflows.reporting import write_sweep_report

        display.print_report(write_sweep_report(settings(), experiment, parent_run, output))


@app.command()
def sweeps(
    experiment: Experiment,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """List the experiment's sweeps, newest first, with what each produced.

    Trials, best score, the winner's hyperparameters, the model version registered from it and
    the promotion decision (else the version's aliases).
    """
    with guarded():
        from pipeline.workflows.reporting import list_sweeps

        display.print_sweeps(list_sweeps(settings(), experiment), experiment, format_.value)
