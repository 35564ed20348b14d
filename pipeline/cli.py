"""Command line: parses options, reads the environment, configures logging, calls one function."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.config import Experiment, Hyperparameters, load_experiment
from pipeline.data import Dataset, Split, load_dataset, split_dataset
from pipeline.errors import PipelineError
from pipeline.evaluate import TestReport
from pipeline.predict import (
    held_out_rows,
    labelled_accuracy,
    predictions_frame,
    read_inputs,
    write_csv,
)
from pipeline.registry import (
    CHALLENGER,
    CHAMPION,
    Decision,
    check_version,
    load_version,
    promote,
    register_challenger,
    rollback,
    version_by_alias,
    version_data,
)
from pipeline.retrain import check_same_data, find_sweep, log_retrain, train_and_test
from pipeline.sweep import SweepResult, TrackingSettings, run_sweep
from pipeline.tracking import check_tracking_server
from pipeline.tune import connect_ray, ray_is_running, run_remote

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


def configure_mlflow_client() -> None:
    """Defaults for MLflow's client, read from the environment (a user's settings win)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Transient tracking-server errors are retried: 5 times with backoff 1, 2, 4, 8, 16 s (MLflow's
    # own default, 7 retries at factor 2, can hold a command for minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def quiet_worker_logs() -> None:
    """Runs in each Ray worker: keep Ray's per-checkpoint INFO lines out of the user's terminal."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def tracking_store() -> tuple[str, Path | None]:
    """MLflow's tracking URI and, for the local default store, where its artifacts go."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    LOCAL_STORE.mkdir(exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}", LOCAL_STORE / "artifacts"


def tracking_settings(address: str | None) -> TrackingSettings:
    """Resolve stores from the environment; the defaults keep everything inside ./mlruns."""
    uri, artifact_root = tracking_store()
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
    configure_mlflow_client()
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
    run_guarded(lambda: tune_command(space, experiment, set_ or [], address, resume, retrain))


def tune_command(
    space: Path,
    experiment_name: str | None,
    overrides: list[str],
    address: str | None,
    resume: bool,
    retrain: bool,
) -> None:
    experiment = load_experiment(space, overrides)
    # One checkpoint kept per trial makes Tune snapshot its state often; that is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    settings = tracking_settings(address)
    check_tracking_server(settings.tracking_uri)
    dataset, split = load_data(experiment)
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
    if result.best is None:
        raise PipelineError("no trial finished without diverging or failing; nothing registered")
    if retrain:
        retrain_command(result.experiment_name, result.parent_run_id, address)


def load_data(experiment: Experiment) -> tuple[Dataset, Split]:
    dataset = load_dataset(experiment.data, experiment.seed, data_cache())
    return dataset, split_dataset(dataset, experiment.data, experiment.seed)


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
    run_guarded(lambda: retrain_command(experiment, parent_run, address))


def retrain_command(experiment_name: str, parent_run_id: str | None, address: str | None) -> None:
    uri, _ = tracking_store()
    check_tracking_server(uri)
    client = MlflowClient(uri)
    sweep = find_sweep(client, experiment_name, parent_run_id)
    dataset, split = load_data(sweep.experiment)
    check_same_data(sweep, split)
    hp = Hyperparameters.from_params(sweep.params)
    log.info(
        "retraining trial %s on %d rows for %d epochs",
        sweep.best["trial_id"],
        len(split.tuning_rows),
        sweep.epochs,
    )
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address or ray_is_running():
        # On the cluster (a GPU node if the space gives trials GPUs); the model comes back here.
        connect_ray(address, quiet_worker_logs, ship_code=bool(address))
        resources = sweep.experiment.resources
        arguments = (sweep.experiment, hp, sweep.epochs, dataset, split)
        final = run_remote(train_and_test, resources.cpus, resources.gpus, *arguments)
    else:
        final = train_and_test(sweep.experiment, hp, sweep.epochs, dataset, split)
    record = log_retrain(uri, sweep, final, dataset, split)
    name = sweep.experiment.model_name
    version = register_challenger(client, uri, name, sweep, record, split)
    metric = sweep.experiment.metric
    out = Console()
    out.print(
        f"retrained trial {sweep.best['trial_id']}: {metric} {float(sweep.best[metric]):.4f} "
        f"in the sweep; test_acc {record.report.test_acc:.4f}, test_loss "
        f"{record.report.test_loss:.4f} on {len(split.test)} held-out rows"
    )
    out.print(f"registered {name} version {version.version} as '{CHALLENGER}'; next: make promote")


def actor() -> str:
    """Who made a registry decision, for its tags."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def forbid_pickle() -> None:
    """Model loading must never unpickle: pt2 models need no pickle, and refuse it."""
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"


@app.command("promote")
def promote_cli(
    model: Annotated[str, typer.Option(help="Registered model name.")],
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

    def command() -> None:
        forbid_pickle()
        uri, _ = tracking_store()
        decision = promote(
            MlflowClient(uri), uri, model, data_cache(), actor(), version, force, min_delta
        )
        print_decision(decision)

    run_guarded(command)


@app.command("rollback")
def rollback_cli(model: Annotated[str, typer.Option(help="Registered model name.")]) -> None:
    """Give `champion` back to the previous champion (and `previous-champion` to the current)."""

    def command() -> None:
        uri, _ = tracking_store()
        print_decision(rollback(MlflowClient(uri), model, actor()))

    run_guarded(command)


def print_decision(decision: Decision) -> None:
    out = Console()
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


def describe_report(report: TestReport) -> str:
    return (
        f"test_acc {report.test_acc:.4f}, test_loss {report.test_loss:.4f}, "
        f"macro F1 {report.macro_f1:.4f}"
    )


def resolve_version(client: MlflowClient, model: str, alias: str, version: int | None) -> str:
    return (
        check_version(client, model, version) if version else version_by_alias(client, model, alias)
    )


@app.command("predict")
def predict_cli(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    input_: Annotated[
        Path, typer.Option("--input", help="CSV of features, .npy array, or folder of images.")
    ],
    output: Annotated[Path, typer.Option(help="CSV to write the predictions to.")],
    alias: Annotated[str, typer.Option(help="Alias of the version to use.")] = CHAMPION,
    version: Annotated[
        int | None, typer.Option(help="A version number instead of an alias.")
    ] = None,
) -> None:
    """Predict labels and class probabilities with a registered model."""

    def command() -> None:
        forbid_pickle()
        uri, _ = tracking_store()
        client = MlflowClient(uri)
        chosen = resolve_version(client, model, alias, version)
        loaded = load_version(uri, model, chosen)
        inputs = read_inputs(input_, loaded.metadata)
        probabilities = loaded.predict_probabilities(inputs.features)
        frame = predictions_frame(probabilities, loaded.metadata["class_names"], inputs)
        write_csv(frame, output)
        out = Console()
        out.print(f"{model} version {chosen}: {len(frame)} predictions written to {output}")
        accuracy = labelled_accuracy(frame)
        if accuracy is not None:
            logged = client.get_model_version(model, chosen).tags.get("test_acc")
            against = f" (logged test_acc {float(logged):.4f})" if logged else ""
            out.print(f"accuracy {accuracy:.4f} on {len(frame)} labelled rows{against}")

    run_guarded(command)


@app.command("export-test-rows")
def export_test_rows_cli(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    output: Annotated[Path, typer.Option(help="CSV to write the rows to.")],
    alias: Annotated[str, typer.Option(help="Alias of the version whose data to use.")] = CHAMPION,
) -> None:
    """Write the held-out test rows a version was scored on (features and label) as CSV."""

    def command() -> None:
        forbid_pickle()
        uri, _ = tracking_store()
        chosen = version_by_alias(MlflowClient(uri), model, alias)
        loaded = load_version(uri, model, chosen)
        dataset, split = version_data(loaded, data_cache())
        write_csv(held_out_rows(dataset, split), output)
        Console().print(f"{len(split.test)} test rows of {dataset.name} written to {output}")

    run_guarded(command)


@app.command("serve")
def serve_cli(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="Alias of the version to serve.")] = CHAMPION,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the REST endpoint.")] = 5001,
) -> None:
    """Serve a registered version over HTTP (`mlflow models serve`): POST /invocations."""

    def command() -> None:
        uri, _ = tracking_store()
        chosen = version_by_alias(MlflowClient(uri), model, alias)
        console.print(
            f"serving {model} version {chosen} ({alias}) on http://{host}:{port}/invocations"
        )
        # The version, not the alias, is served: a promotion meanwhile does not change it.
        arguments = ["models", "serve", "-m", f"models:/{model}/{chosen}", "--env-manager", "local"]
        arguments += ["--host", host, "--port", str(port)]
        exec_mlflow(
            arguments, {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
        )

    run_guarded(command)


def run_guarded(command: Callable[[], None]) -> None:
    """Run a command; a PipelineError becomes one line on stderr and exit status 1."""
    try:
        command()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except PipelineError as exc:
        if state["debug"]:
            raise
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


def mlflow_executable_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for an `mlflow` subprocess: its helpers (uvicorn, gunicorn) on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **extra, "PATH": path}


def exec_mlflow(arguments: list[str], extra_env: dict[str, str]) -> None:
    """Replace this process by `mlflow ARGUMENTS` (signals then reach MLflow directly)."""
    command = [sys.executable, "-m", "mlflow", *arguments]
    os.execve(sys.executable, command, mlflow_executable_env(extra_env))


def check_backend_store(uri: str) -> None:
    """Connect once to a database backend, so a wrong URI is one clear line, not a traceback."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        url = make_url(uri)
    except ArgumentError:
        raise PipelineError(f"MLFLOW_BACKEND_STORE_URI is not a database URL: {uri!r}") from None
    shown = url.render_as_string(hide_password=True)
    arguments = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
    try:
        with create_engine(url, connect_args=arguments).connect() as connection:
            connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise PipelineError(f"cannot open the backend store {shown}: {reason}") from None


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
        str, typer.Option(envvar="MLFLOW_SERVER_HOST", help="Interface to bind.")
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

    def command() -> None:
        if not backend_store_uri:
            raise PipelineError(
                "set MLFLOW_BACKEND_STORE_URI (e.g. postgresql://mlflow@127.0.0.1:5432/mlflow) "
                "or pass --backend-store-uri"
            )
        check_backend_store(backend_store_uri)
        destination = artifacts_destination
        if "://" not in destination:
            Path(destination).mkdir(parents=True, exist_ok=True)
            destination = str(Path(destination).resolve())
        arguments = ["server", "--backend-store-uri", backend_store_uri, "--serve-artifacts"]
        arguments += ["--artifacts-destination", destination, "--host", host, "--port", str(port)]
        arguments += ["--workers", str(workers)]
        # MLflow's host-header and CORS protections stay on; these only widen what they allow.
        if allowed_hosts:
            arguments += ["--allowed-hosts", allowed_hosts]
        if cors_allowed_origins:
            arguments += ["--cors-allowed-origins", cors_allowed_origins]
        if basic_auth:
            arguments += ["--app-name", "basic-auth"]
        console.print(f"MLflow tracking server on http://{host}:{port} (artifacts: {destination})")
        exec_mlflow(arguments, {})

    run_guarded(command)


@app.command("ui")
def ui_cli(
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Browse the runs: the MLflow UI over the local store, or where the tracking server is."""

    def command() -> None:
        uri, _ = tracking_store()
        if uri.startswith(("http://", "https://")):
            check_tracking_server(uri)
            Console().print(f"the tracking server serves the UI: open {uri}")
            return
        console.print(f"MLflow UI over {uri} on http://127.0.0.1:{port}")
        exec_mlflow(
            ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)], {}
        )

    run_guarded(command)
