"""Commands that run MLflow's servers: the tracking server and the UI."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.app import Port, app, guarded, start
from pipeline.cli.environment import settings


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
    *,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 2,
    allowed_hosts: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_SERVER_ALLOWED_HOSTS",
            help="Host headers to answer besides MLflow's defaults (localhost, private IPs).",
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
        bool, typer.Option(help="Require MLflow's basic authentication.")
    ] = False,
) -> None:
    """Run an MLflow tracking server: database backend, artifacts served through the server."""
    with guarded():
        from pipeline.tracking.server import ServerOptions, server_launch

        options = ServerOptions(
            backend_store_uri=backend_store_uri,
            artifacts_destination=artifacts_destination,
            host=host,
            port=port,
            workers=workers,
            allowed_hosts=allowed_hosts,
            cors_allowed_origins=cors_allowed_origins,
            basic_auth=basic_auth,
        )
        start(server_launch(options))


@app.command("ui")
def ui_cli(port: Port = 5000) -> None:
    """Browse the runs: the MLflow UI over the local store, or where the tracking server is."""
    with guarded():
        from pipeline.workflows.serving import ui

        start(ui(settings(), port))
