"""Command line: each command parses its options, calls one library function and prints its
result. Torch, MLflow and Ray are imported inside the commands that use them, so `--help` and
the registry commands start fast (and never load Ray)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pipeline import display
from pipeline.environment import actor, configure, settings
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.tracking.server import Launch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune PyTorch networks with Ray Tune + HyperOpt + ASHA, tracked in MLflow.",
)
console = Console(stderr=True)
state = {"debug": False}

Model = Annotated[str, typer.Option(help="Registered model name.")]
Alias = Annotated[str, typer.Option(help="Alias of the version to use.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


@contextmanager
def guarded() -> Iterator[None]:
    """A PipelineError becomes one line on stderr and exit status 1; Ctrl-C exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except PipelineError as exc:
        if state["debug"]:
            raise
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


def start(launch: Launch) -> None:
    """Announce an MLflow program, then become it."""
    console.print(launch.banner)
    launch.run()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    configure(console, debug)
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
    retrain: Annotated[
        bool, typer.Option(help="Retrain the best trial and register it as challenger.")
    ] = True,
) -> None:
    """Run a tuning sweep described by a search-space file, then retrain and register the best."""
    with guarded():
        from pipeline.workflows.tuning import tune_and_register

        outcome = tune_and_register(
            space, settings(address), experiment, set_, resume, retrain, display.print_sweep
        )
    if outcome.sweep.interrupted:
        display.print_resume_hint(space, outcome.sweep.experiment_name)
        raise typer.Exit(130)
    if outcome.registration is not None:
        display.print_registration(outcome.registration)


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
        from pipeline.workflows.tuning import retrain_and_register

        display.print_registration(retrain_and_register(settings(address), experiment, parent_run))


@app.command("promote")
def promote_cli(
    model: Model,
    version: Annotated[
        int | None, typer.Option(help="Version to promote (default: the challenger).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Promote without comparing against the champion.")
    ] = False,
    min_delta: Annotated[
        float, typer.Option(help="Test accuracy the candidate must gain over the champion.")
    ] = 0.0,
) -> None:
    """Make the challenger champion if it beats the champion on the test split."""
    with guarded():
        from pipeline.workflows.serving import promote

        display.print_decision(promote(settings(), model, actor(), version, force, min_delta))


@app.command("rollback")
def rollback_cli(model: Model) -> None:
    """Give `champion` back to the previous champion (and `previous-champion` to the current)."""
    with guarded():
        from pipeline.workflows.serving import rollback

        display.print_decision(rollback(settings(), model, actor()))


@app.command("predict")
def predict_cli(
    model: Model,
    input_: Annotated[
        Path, typer.Option("--input", help="CSV of features, .npy array, or folder of images.")
    ],
    output: Annotated[Path, typer.Option(help="CSV to write the predictions to.")],
    alias: Alias = "champion",
    version: Annotated[
        int | None, typer.Option(help="A version number instead of an alias.")
    ] = None,
) -> None:
    """Predict labels and class probabilities with a registered model."""
    with guarded():
        from pipeline.workflows.serving import predict

        display.print_prediction(predict(settings(), model, input_, output, alias, version))


@app.command("export-test-rows")
def export_test_rows_cli(
    model: Model,
    output: Annotated[Path, typer.Option(help="CSV to write the rows to.")],
    alias: Alias = "champion",
) -> None:
    """Write the held-out test rows a version was scored on (features and label) as CSV."""
    with guarded():
        from pipeline.workflows.serving import export_test_rows

        display.print_exported(export_test_rows(settings(), model, output, alias))


@app.command("serve")
def serve_cli(
    model: Model,
    alias: Alias = "champion",
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Port = 5001,
) -> None:
    """Serve a registered version over HTTP (`mlflow models serve`): POST /invocations."""
    with guarded():
        from pipeline.workflows.serving import serve

        start(serve(settings(), model, alias, host, port))


@app.command("mlflow-server")
def mlflow_server_cli(
    backend_store_uri: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_BACKEND_STORE_URI",
            help="Database of runs and models, e.g. postgresql://mlflow@127.0.0.1:5432/mlflow.",
        ),
    ] = "",
    artifacts_destination: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_ARTIFACTS_DESTINATION",
            help="Where the server keeps artifacts: a folder or s3://bucket/prefix.",
        ),
    ] = "mlruns/server-artifacts",
    host: Annotated[
        str, typer.Option(envvar="MLFLOW_SERVER_HOST", help="Interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="MLFLOW_SERVER_PORT", help="Port.")] = 5000,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 2,
    allowed_hosts: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_SERVER_ALLOWED_HOSTS",
            help="Host headers to answer (DNS-rebinding protection); empty: MLflow's default.",
        ),
    ] = "",
    cors_allowed_origins: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
            help="Browser origins allowed by CORS; empty: MLflow's default.",
        ),
    ] = "",
    basic_auth: Annotated[
        bool, typer.Option(help="Require MLflow's basic authentication (--app-name basic-auth).")
    ] = False,
) -> None:
    """Run an MLflow tracking server: database backend, artifacts served through the server."""
    with guarded():
        from pipeline.tracking.server import ServerOptions, server_launch

        start(server_launch(ServerOptions(
            backend_store_uri, artifacts_destination, host, port, workers, allowed_hosts,
            cors_allowed_origins, basic_auth,
        )))  # fmt: skip


@app.command("ui")
def ui_cli(port: Port = 5000) -> None:
    """Browse the runs: the MLflow UI over the local store, or where the tracking server is."""
    with guarded():
        from pipeline.workflows.serving import ui

        start(ui(settings(), port))
