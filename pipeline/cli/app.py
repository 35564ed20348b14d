"""The `python -m pipeline` app: options shared by the commands, error handling, and the setup
every command gets (logging, MLflow's client defaults)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import typer
from rich.console import Console

from pipeline.cli.environment import configure
from pipeline.errors import (
    EXIT_INTERRUPTED,
    EXIT_STORE_AWAY,
    EXIT_TERMINATED,
    PipelineError,
    StoreAway,
    Terminated,
)

if TYPE_CHECKING:
    from pipeline.tracking.server import Launch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune PyTorch networks with Ray Tune + HyperOpt + ASHA, tracked in MLflow.",
)
console = Console(stderr=True)

Space = Annotated[Path, typer.Option(help="Search-space YAML file.")]
DEFAULT_SPACE = Path("search_spaces/default.yaml")
Model = Annotated[str, typer.Option(help="Registered model name.")]
Alias = Annotated[str, typer.Option(help="Alias of the version to use.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


@contextmanager
def guarded() -> Iterator[None]:
    """A PipelineError becomes one line on stderr and exit status 1 (69 for a tracking store
    that stayed away); Ctrl-C exits 130, SIGTERM 143."""
    try:
        yield
    except Terminated:
        console.print("terminated")
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except PipelineError as exc:
        if debugging():
            raise
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_STORE_AWAY if isinstance(exc, StoreAway) else 1)


def debugging() -> bool:
    """Whether the command runs with --debug (an option of the whole app, held by click's
    context for the one command that runs)."""
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.find_root().params.get("debug"))


def exit_promptly() -> NoReturn:
    """End a command that has written and printed everything, with status 0, skipping the
    interpreter's teardown: after `tune`, freeing torch, Ray, MLflow, scikit-learn and
    matplotlib took 4 s past the last line (2 cores), and it does nothing the command needs.
    Output is flushed and the SQLite store closed first; Ray has been left already."""
    from pipeline.tracking.store import exit_now  # loaded already: the command used it

    exit_now(0)


def start(launch: Launch) -> None:
    """Announce an MLflow program, then become it."""
    console.print(launch.banner)
    launch.run()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[
        bool, typer.Option(help="Show Ray's and MLflow's own output (banners, hints, tracebacks).")
    ] = False,
) -> None:
    configure(console, debug, verbose)
    signal.signal(signal.SIGTERM, raise_terminated)


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that runs end KILLED and locks are released."""
    raise Terminated()
