"""Commands that tune: a sweep (then retrain and register), or the retrain alone."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli import display
from pipeline.cli.app import DEFAULT_SPACE, Space, app, console, exit_promptly, guarded
from pipeline.cli.environment import settings
from pipeline.cli.progress import SweepProgress
from pipeline.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from pipeline.stopwatch import Stopwatch


@app.command()
def tune(
    space: Space = DEFAULT_SPACE,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: the space's name).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. budget.num_samples=8.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else local).")
    ] = None,
    *,
    resume: Annotated[
        bool, typer.Option(help="Resume the experiment's latest interrupted sweep.")
    ] = False,
    abandon: Annotated[
        bool,
        typer.Option(
            help="Give up the experiment's interrupted sweeps (runs KILLED, trial state removed) "
            "and start a new one."
        ),
    ] = False,
    retrain: Annotated[
        bool, typer.Option(help="Retrain the best trial and register it as challenger.")
    ] = True,
) -> None:
    """Run a tuning sweep described by a search-space file, then retrain and register the best.

    A sweep stopped by Ctrl-C (exit status 130), SIGTERM (143) or a crash can be resumed; a new
    sweep is refused while one is interrupted, unless --abandon gives it up.
    """
    stopwatch = Stopwatch()
    with guarded():
        from pipeline.workflows.tuning import tune_and_register

        stopwatch.lap("imports")
        outcome = tune_and_register(
            space,
            settings(address),
            experiment_name=experiment,
            overrides=set_,
            resume=resume,
            abandon=abandon,
            retrain=retrain,
            on_sweep=display.print_sweep,
            watcher=SweepProgress(console),
            stopwatch=stopwatch,
        )
    if outcome.sweep.interrupted:
        display.print_resume_hint(space, outcome.sweep.experiment_name)
        raise typer.Exit(EXIT_TERMINATED if outcome.sweep.terminated else EXIT_INTERRUPTED)
    if outcome.registration is not None:
        display.print_registration(outcome.registration)
    if outcome.report is not None:
        display.print_report(outcome.report)
    display.print_timings(stopwatch)
    exit_promptly()


@app.command("sync")
def sync_cli() -> None:
    """Deliver the tracking writes kept while the tracking store was away (or its driver was
    killed) to the store (MLFLOW_TRACKING_URI); a second sync finds nothing to do.

    Exit status: 0 delivered (or nothing kept), 1 the store refused some, 69 the store is still
    away (the writes stay kept).
    """
    with guarded():
        from pipeline.tracking.delivery import deliver_kept_writes

        display.print_delivered(deliver_kept_writes(settings()))


@app.command("retrain")
def retrain_cli(
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the sweep.")],
    parent_run: Annotated[
        str | None, typer.Option(help="The sweep's parent run id (default: the latest sweep).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Train on this Ray cluster (default: $RAY_ADDRESS).")
    ] = None,
) -> None:
    """Retrain a sweep's best trial on train + validation, test it, register it as challenger."""
    with guarded():
        from pipeline.workflows.retraining import retrain_and_register

        display.print_registration(retrain_and_register(settings(address), experiment, parent_run))
