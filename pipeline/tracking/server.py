"""MLflow's own programs (tracking server, UI, model server), run in place of this process, and
the check that a server's database answers before it starts."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.tracking.preflight import STORE_TIMEOUT_S, check_database

MODEL_URI_VARIABLE = "PIPELINE_SERVE_MODEL_URI"  # the version `pipeline.tracking.scoring` serves
UI_APP = "hpo-pipeline"  # our MLflow server app (pyproject.toml's mlflow.app entry points)


@dataclass(frozen=True)
class Launch:
    """A `python -m MODULE` command line (MLflow's, or uvicorn's for the model server) to replace
    this process with, and the line that announces it."""

    banner: str
    arguments: list[str] = field(default_factory=list)  # empty: nothing to run
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    module: str = "mlflow"
    defaults: dict[str, str] = field(default_factory=dict)  # unless the environment sets them

    def run(self) -> None:
        """Replace this process by `python -m MODULE ARGUMENTS` (signals then reach it)."""
        if not self.arguments:
            return
        # MLflow's helpers (uvicorn, gunicorn) sit next to this interpreter.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        command = [sys.executable, "-m", self.module, *self.arguments]
        environment = {**self.defaults, **os.environ, **self.env, "PATH": path}
        os.execve(sys.executable, command, environment)


# MLflow's server jobs (huey consumers for GenAI scorers, trace rollups and periodic tasks) serve
# nothing this pipeline uses, and cost each server 7 more processes of ~250 MB; MLflow's own note
# warns that replicas running the periodic ones duplicate them. Off unless the environment says
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true (deploy/mlflow/entrypoint.sh does the same).
WITHOUT_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """How to run a tracking server (see `python -m pipeline mlflow-server --help`)."""

    backend_store_uri: str
    artifacts_destination: str
    host: str
    port: int
    workers: int
    allowed_hosts: str = ""  # added to MLflow's defaults (localhost, private addresses)
    cors_allowed_origins: str = ""
    basic_auth: bool = False


def server_launch(options: ServerOptions) -> Launch:
    """`mlflow server` on a database backend, artifacts served through the server."""
    if not options.backend_store_uri:
        raise PipelineError(
            "set MLFLOW_BACKEND_STORE_URI (e.g. postgresql://mlflow@127.0.0.1:5432/mlflow) "
            "or pass --backend-store-uri"
        )
    check_database(options.backend_store_uri, STORE_TIMEOUT_S, "backend store")
    destination = options.artifacts_destination
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
        destination = str(Path(destination).resolve())
    arguments = ["server", "--backend-store-uri", options.backend_store_uri, "--serve-artifacts"]
    arguments += ["--artifacts-destination", destination]
    arguments += ["--host", options.host, "--port", str(options.port)]
    arguments += ["--workers", str(options.workers)]
    # MLflow's host-header and CORS protections stay on; these only widen what they allow.
    if options.allowed_hosts:
        arguments += ["--allowed-hosts", with_default_hosts(options.allowed_hosts)]
    if options.cors_allowed_origins:
        arguments += ["--cors-allowed-origins", options.cors_allowed_origins]
    # MLflow's server app with its UI opening on the runs table (tracking/ui_page.py).
    arguments += ["--app-name", UI_APP + ("-basic-auth" if options.basic_auth else "")]
    banner = (
        f"MLflow tracking server on http://{options.host}:{options.port} (artifacts: {destination})"
    )
    return Launch(banner, arguments, defaults=WITHOUT_JOBS)


def with_default_hosts(extra: str) -> str:
    """MLflow's default allowed hosts plus `extra` (comma-separated): its --allowed-hosts
    replaces the defaults, which would lock out localhost (a port-forward) and private addresses
    (a pod's IP). deploy/mlflow/prepare.py applies the same rule in the server image."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    hosts = [*get_default_allowed_hosts(), *(h.strip() for h in extra.split(",") if h.strip())]
    return ",".join(dict.fromkeys(hosts))


def ui_launch(tracking_uri: str, port: int) -> Launch:
    """The MLflow UI over a local store; a tracking server serves its own UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return Launch(f"the tracking server serves the UI: open {tracking_uri}")
    arguments = ["ui", "--backend-store-uri", tracking_uri]
    arguments += ["--host", "127.0.0.1", "--port", str(port)]
    # One browser needs one web worker; MLflow's default starts 4 (`--workers`, else 4).
    arguments += ["--workers", "1", "--app-name", UI_APP]
    # Browsing runs and models needs no server jobs (see WITHOUT_JOBS); off, the UI answers in
    # seconds.
    env = WITHOUT_JOBS
    banner = f"MLflow UI over {tracking_uri} on http://127.0.0.1:{port}"
    return Launch(banner, arguments, env)


def model_server_launch(
    tracking_uri: str, model: str, version: str, alias: str, *, host: str, port: int
) -> Launch:
    """MLflow's scoring server over one registered version, in this environment, pickle-free,
    its inputs checked for non-finite values first (see `pipeline.tracking.scoring`)."""
    # The version, not the alias, is served: a promotion meanwhile does not change it.
    arguments = ["--factory", "pipeline.tracking.scoring:make_app"]
    arguments += ["--host", host, "--port", str(port)]
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        MODEL_URI_VARIABLE: f"models:/{model}/{version}",
    }
    banner = f"serving {model} version {version} ({alias}) on http://{host}:{port}/invocations"
    return Launch(banner, arguments, env, module="uvicorn")
