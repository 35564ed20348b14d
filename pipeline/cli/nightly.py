"""Commands for nightly reruns: run a night, read the nights' history, schedule them with cron."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import display
from pipeline.cli.app import DEFAULT_SPACE, Model, Space, app, console, guarded
from pipeline.cli.environment import actor, settings, webhook_url
from pipeline.cli.progress import SweepProgress


@app.command()
def nightly(
    space: Space = DEFAULT_SPACE,
    date: Annotated[
        str | None, typer.Option(help="The night, YYYY-MM-DD (default: today in UTC).")
    ] = None,
    min_delta: Annotated[
        float, typer.Option(help="Test accuracy the challenger must gain over the champion.")
    ] = 0.0,
    keep: Annotated[
        int, typer.Option(help="Model versions to keep (aliased ones are never deleted).")
    ] = 10,
) -> None:
    """One night: retune, retrain, register; promote only if better.

    Exit status: 0 done (or already done), 1 failed, 3 no valid trial, 69 the tracking store
    stayed away (its writes are kept: rerun once it is back to deliver them and resume), 75
    another night of the space is running (try later), 130 / 143 interrupted by Ctrl-C /
    SIGTERM (rerun to resume).
    """
    with guarded():
        from pipeline.workflows.nightly import run_night

        night = run_night(
            space,
            settings(),
            actor(),
            date=date,
            min_delta=min_delta,
            keep=keep,
            webhook_url=webhook_url(),
            watcher=SweepProgress(console),
        )
    display.print_night(night)
    raise typer.Exit(night.exit_code)


@app.command()
def history(
    model: Model,
    nights: Annotated[int, typer.Option(help="How many of the last nights.")] = 14,
) -> None:
    """The model's last nights: trials, scores, decision and champion of each."""
    with guarded():
        from pipeline.workflows.nights import history as read_history

        display.print_history(read_history(settings(), model, nights), model)


@app.command()
def schedule(
    space: Space = DEFAULT_SPACE,
    at: Annotated[str, typer.Option(help="Time of day, HH:MM (this machine's time).")] = "02:00",
) -> None:
    """Run the space's night every day at AT with cron (from this folder, log in mlruns/)."""
    with guarded():
        from pipeline.workflows.schedule import schedule as install

        installed = install(Path.cwd(), Path(sys.executable), space.resolve(), at)
    display.print_scheduled(installed.line)


@app.command()
def unschedule(space: Space = DEFAULT_SPACE) -> None:
    """Remove the cron line that runs the space's night from this folder."""
    with guarded():
        from pipeline.workflows.schedule import unschedule as remove

        display.results().print(f"removed {remove(Path.cwd(), space.resolve())} crontab line(s)")
