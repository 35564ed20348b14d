"""Command line: parses options, reads the environment, configures logging, calls one function."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.config import load_experiment
from pipeline.data import load_dataset, split_dataset
from pipeline.errors import PipelineError
from pipeline.sweep import SweepResult, TrackingSettings, run_sweep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune PyTorch networks with Ray Tune + HyperOpt + ASHA, tracked in MLflow.",
)
console = Console(stderr=True)
log = logging.getLogger("pipeline")

LOCAL_STORE = Path("mlruns")
state = {"debug": False}


def configure_logging(debug: bool) -> None:
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("pipeline").setLevel(logging.DEBUG if debug else logging.INFO)
    # Quiet MLflow's and alembic's chatter about database migrations on every new SQLite store.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_worker_logs() -> None:
    """Runs in each Ray worker: keep Ray's per-checkpoint INFO lines out of the user's terminal."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def tracking_settings(address: str | None) -> TrackingSettings:
    """Resolve stores from the environment; the defaults keep everything inside ./mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    artifact_root = None
    if not uri:
        LOCAL_STORE.mkdir(exist_ok=True)
        uri = f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"
        artifact_root = LOCAL_STORE / "artifacts"
    storage = os.environ.get("PIPELINE_STORAGE") or str((LOCAL_STORE / "ray").resolve())
    return TrackingSettings(
        tracking_uri=uri,
        artifact_root=artifact_root,
        storage=storage,
        ray_address=address or os.environ.get("RAY_ADDRESS") or None,
        code_version=git_commit(),
        worker_setup=quiet_worker_logs,
    )


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_cache() -> Path:
    return Path(os.environ.get("PIPELINE_DATA_DIR") or Path.home() / ".cache" / "hpo-pipeline")


def print_summary(result: SweepResult, metric: str, top: int = 5) -> None:
    table = result.table
    out = Console(width=None if sys.stdout.isatty() else 120)
    if not table.empty and metric in table:
        ascending = metric != "val_acc"
        ranked = table.sort_values(metric, ascending=ascending, na_position="last").head(top)
        shown = Table(title=f"best {min(top, len(ranked))} of {len(table)} trials")
        columns = ["trial_id", "state", metric, "epoch"] + [
            c
            for c in (
                "optimizer",
                "lr",
                "hidden_layers",
                "hidden_units",
                "activation",
                "batch_size",
            )
            if c in ranked
        ]
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


def format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    configure_logging(debug)
    state["debug"] = debug


@app.command()
def tune(
    space: Annotated[Path, typer.Option(help="Search-space YAML file.")] = Path(
        "search_spaces/default.yaml"
    ),
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: the space's name).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. budget.num_samples=8.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else local).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume the experiment's latest interrupted sweep.")
    ] = False,
) -> None:
    """Run a tuning sweep described by a search-space file."""
    run_guarded(lambda: tune_command(space, experiment, set_ or [], address, resume))


def tune_command(
    space: Path,
    experiment_name: str | None,
    overrides: list[str],
    address: str | None,
    resume: bool,
) -> None:
    experiment = load_experiment(space, overrides)
    # One checkpoint kept per trial makes Tune snapshot its state often; that is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    settings = tracking_settings(address)
    dataset = load_dataset(experiment.data, experiment.seed, data_cache())
    split = split_dataset(dataset, experiment.data, experiment.seed)
    log.info(
        "%s: %d rows (%d train, %d val, %d test), %d classes",
        dataset.name,
        len(dataset.labels),
        len(split.train),
        len(split.val),
        len(split.test),
        dataset.num_classes,
    )
    result = run_sweep(
        experiment,
        experiment_name or experiment.name,
        dataset,
        split,
        space.read_text(),
        settings,
        resume,
    )
    print_summary(result, experiment.metric)
    if result.interrupted:
        console.print(
            f"sweep interrupted; continue it with: python -m pipeline tune --space {space} "
            f"--experiment {result.experiment_name} --resume"
        )
        raise typer.Exit(130)


def run_guarded(command: Callable[[], None]) -> None:
    """Run a command; a PipelineError becomes one line on stderr and exit status 1."""
    try:
        command()
    except PipelineError as exc:
        if state["debug"]:
            raise
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
