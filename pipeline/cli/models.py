"""Commands on registered models: promote, roll back, predict, export test rows, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import display
from pipeline.cli.app import Alias, Model, Port, app, guarded, start
from pipeline.cli.environment import actor, settings


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

        decision = promote(
            settings(), model, actor(), version=version, force=force, min_delta=min_delta
        )
        display.print_decision(decision)


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
    *,
    version: Annotated[
        int | None, typer.Option(help="A version number instead of an alias.")
    ] = None,
) -> None:
    """Predict labels and class probabilities with a registered model."""
    with guarded():
        from pipeline.workflows.serving import predict

        prediction = predict(settings(), model, input_, output, alias=alias, version=version)
        display.print_prediction(prediction)


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

        start(serve(settings(), model, alias, host=host, port=port))
