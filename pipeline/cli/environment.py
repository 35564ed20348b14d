"""The CLI's side of the process: logging, MLflow's client defaults, and the stores, cluster
and user read from the environment. Nothing below the CLI reads the environment."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from pipeline.errors import PipelineError
from pipeline.settings import Settings

LOCAL_STORE = Path("mlruns")


# What Ray and MLflow print on every local run that a user need not read; `--verbose` shows it.
CHATTER = {
    # "Token authentication is enabled for this Ray cluster" (it stays enabled).
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    # A failed trial's traceback: the progress display gives its exception in one line, and
    # Ray keeps the traceback in the trial's error.txt.
    "ray.tune.execution.tune_controller": logging.CRITICAL,
    # "Failed to fetch metrics for 1 trial(s)" at the end of a sweep resumed after a crash: a
    # trial its killed driver had started, and that left no result, has no results folder; the
    # resume reconciles the trial runs with Ray's saved state (`resume.reconcile_trial_runs`).
    "ray.tune.analysis.experiment_analysis": logging.ERROR,
    # "Creating initial MLflow database tables..." on every new SQLite store.
    "mlflow.store.db.utils": logging.WARNING,
    "alembic": logging.WARNING,
    # A nine-line "Retrying (Retry(total=4, ...))" per retry of a request to a tracking server
    # that is away; a request that still fails after its retries is an error of its own.
    "urllib3.connectionpool": logging.ERROR,
}


# Ray errors it recovers from by itself, whose tracebacks are noise: kept, as one line. (Saving
# the experiment state races with the searcher replacing its state file; the next save works.)
ONE_LINE = ("ray.tune.execution.experiment_state",)


class WithoutTraceback(logging.Filter):
    """Keeps a record, with its exception as one line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} {type(exc).__name__}: {exc}", None
            record.exc_info, record.exc_text = None, None
        return True


def configure(console: Console, debug: bool, verbose: bool = False) -> None:
    """Logging to `console`, and MLflow's and Tune's defaults (a user's own settings win);
    unless `verbose`, Ray's and MLflow's routine chatter is not shown."""
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("pipeline").setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if not (verbose or debug):
        for name, level in CHATTER.items():
            logging.getLogger(name).setLevel(level)
        for name in ONE_LINE:
            logging.getLogger(name).addFilter(WithoutTraceback())
        # Tune's own console output (its configuration box, result tables, TensorBoard hint)
        # gives way to our progress display: the legacy reporter at verbose=0 prints nothing.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # What trial workers print is not echoed by the driver: a worker that Ray stops with
        # SIGTERM may print a traceback from inside Ray's own handler. A trial's error still
        # shows as one line, with its traceback in the trial's error.txt; the workers' output
        # stays in Ray's session logs on each node. (Ray reads this on import: no command
        # imports Ray before `configure`.)
        os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")
    # MLflow configures its own loggers on import, from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Every run ended on a tracking server prints "View run ... / View experiment ..." into our
    # output (and costs a request to fetch its name): the sweep's summary says where runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's usage telemetry is a queue and a sender thread in the driver, beside the trials.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # A request MLflow cannot get answered is tried 3 times more, 1, 2 and 4 s apart (its own
    # default, 7 retries at factor 2, holds a call for minutes): a longer outage is the
    # pipeline's to ride out (its spool and its waits, up to PIPELINE_TRACKING_OUTAGE_TIMEOUT),
    # and is told within seconds of its start.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # Model loading never unpickles: pt2 models need no pickle, and refuse it.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    # budget.checkpoint_seconds=0 (a checkpoint every epoch) makes Tune snapshot its state
    # often, as asked.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def settings(address: str | None = None) -> Settings:
    """Stores and cluster from the environment; the defaults keep everything inside ./mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    local = LOCAL_STORE.resolve()
    data_dir = os.environ.get("PIPELINE_DATA_DIR") or Path.home() / ".cache" / "hpo-pipeline"
    return Settings(
        tracking_uri=uri or f"sqlite:///{local / 'mlflow.db'}",
        artifact_root=artifact_root(uri),
        storage=os.environ.get("PIPELINE_STORAGE") or str(local / "ray"),
        data_dir=Path(data_dir),
        ray_address=address or os.environ.get("RAY_ADDRESS") or None,
        code_version=git_commit(),
        # The one setting boto3, the aws CLI and MLflow's S3 artifacts read too.
        storage_endpoint=os.environ.get("AWS_ENDPOINT_URL") or None,
        spool_dir=Path(os.environ.get("PIPELINE_SPOOL_DIR") or local / "spool"),
        outage_timeout=outage_timeout(),
    )


def outage_timeout() -> float:
    """How long to wait for a tracking store that is away (seconds; 600 unless
    PIPELINE_TRACKING_OUTAGE_TIMEOUT says otherwise): a server restart or a database failover
    takes a minute or two."""
    given = os.environ.get("PIPELINE_TRACKING_OUTAGE_TIMEOUT") or "600"
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise PipelineError(
            f"PIPELINE_TRACKING_OUTAGE_TIMEOUT={given!r}: expected seconds, a number >= 0"
        )
    return seconds


def artifact_root(tracking_uri: str | None) -> Path | None:
    """Where new experiments keep their artifacts: beside a SQLite store's database (two stores
    never share artifact folders), the server's choice for any other store."""
    if tracking_uri is None:
        return LOCAL_STORE.resolve() / "artifacts"
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).absolute().parent / "artifacts"
    return None


def webhook_url() -> str | None:
    """Where nights post their outcome (NIGHTLY_WEBHOOK_URL); None: nowhere."""
    return os.environ.get("NIGHTLY_WEBHOOK_URL") or None


PACKAGE = Path(__file__).resolve().parents[1]  # pipeline/, wherever the command runs from


def git_commit() -> str | None:
    """The commit of the code that runs: that of the git checkout the package itself is part
    of (not of the folder the command runs in); None for a package installed from a wheel."""
    asks = (["ls-files", "--error-unmatch", "__init__.py"], ["rev-parse", "HEAD"])
    try:
        answers = [
            subprocess.run(
                ["git", "-C", str(PACKAGE), *ask], capture_output=True, text=True, timeout=5
            )
            for ask in asks
        ]
    except (OSError, subprocess.TimeoutExpired):
        return None
    if any(answer.returncode != 0 for answer in answers):
        return None
    return answers[-1].stdout.strip() or None


def actor() -> str:
    """Who made a registry decision, for its tags."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
