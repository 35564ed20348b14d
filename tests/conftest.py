"""Shared fixtures: the real shipped search spaces and the bundled digits data."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.config import DataConfig
from pipeline.core.data import Dataset, Split, TuningData, split_dataset, tuning_data
from pipeline.core.sources import load_dataset

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"


@pytest.fixture(autouse=True)
def isolated_environment() -> Iterator[None]:
    """Each test sees the environment its session started with. The CLI sets process-wide
    defaults (`environment.configure`, e.g. RAY_LOG_TO_DRIVER=0 when not verbose); a test that
    runs the CLI in-process would otherwise hand them to every later test in its worker, and to
    the subprocesses those start."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset(DataConfig(source="digits"), seed=0, cache_dir=Path("/nonexistent"))


@pytest.fixture(scope="session")
def digits_split(digits: Dataset) -> Split:
    return split_dataset(digits, DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="session")
def digits_tuning(digits: Dataset, digits_split: Split) -> TuningData:
    return tuning_data(digits, digits_split, DataConfig(source="digits"))


def cli_env(**settings: str) -> dict[str, str]:
    """This environment without tracking or cluster settings (so: the local store and a local
    Ray), plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, "PYTHONPATH": str(REPO), **settings}


def run_cli(
    cwd: Path, *args: str, timeout: float = 300, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` in `cwd`, with `cli_env(**settings)`."""
    env = cli_env(**settings)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port nothing listens on now (not 6379: Redis may hold Ray's default)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def background(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process in its own session; it and its children are stopped on exit,
    however the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `ready` until it holds; fail naming `what` (and the log's tail) after `timeout`, or
    as soon as `process` has exited."""
    deadline = time.monotonic() + timeout
    while not ready():
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            problem = "exited" if exited else f"not ready after {timeout:.0f} s"
            pytest.fail(f"{what} {problem}\n{tail}")
        time.sleep(0.5)


HEAVY = ("ray", "torch", "mlflow")
# Runs `python -m pipeline ARGS` and reports which heavy packages it had loaded when it exited.
REPORTING_CLI = f"""
import atexit, json, sys
atexit.register(lambda: print("LOADED", json.dumps([m for m in {HEAVY!r} if m in sys.modules])))
from pipeline.cli import app
app(sys.argv[1:], prog_name="python -m pipeline")
"""


def run_reporting(cwd: Path, *args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run the CLI like `run_cli`; also say which of HEAVY it had loaded when it exited."""
    done = subprocess.run(
        [sys.executable, "-c", REPORTING_CLI, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = [line for line in done.stdout.splitlines() if line.startswith("LOADED ")]
    assert reports, done.stdout + done.stderr
    return set(json.loads(reports[-1].removeprefix("LOADED "))), done


class Hook:
    """A local webhook answering every POST with `status`; it keeps what it received."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.received.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def finished_trial_runs(db: Path) -> int:
    """Trial runs a local store (SQLite) has FINISHED so far; 0 before it exists."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        try:
            rows = connection.execute(
                "SELECT count(*) FROM runs WHERE status = 'FINISHED'"
                " AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'trial_id')"
            ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return 0
    return int(rows[0])


IMAGE_ENVS = REPO / ".venv-images"


def image_env(name: str, installs: list[list[str]]) -> Path:
    """A fresh venv holding one image's package set (no Docker here), built once and kept in
    .venv-images/NAME; rebuilt when what it installs changes. `installs` are pip install
    argument lists, run in order. Returns the venv's bin folder."""
    folder = IMAGE_ENVS / name
    stamp = folder / ".installed"
    wanted = json.dumps(installs) + (REPO / "pyproject.toml").read_text()
    IMAGE_ENVS.mkdir(exist_ok=True)
    with (IMAGE_ENVS / f".{name}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time
        if not stamp.exists() or stamp.read_text() != wanted:
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
            for arguments in installs:
                subprocess.run(
                    [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *arguments],
                    check=True,
                    timeout=1800,
                )
            stamp.write_text(wanted)
    return folder / "bin"


def extra_requirements(extra: str) -> list[str]:
    """An extra's requirements, as the images read them (deploy/requirements.py)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "requirements.py"), extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def torch_spec() -> str:
    """The torch build the Makefile installs first (TORCH_SPEC)."""
    found = re.search(r"^TORCH_SPEC \?= (\S+)", (REPO / "Makefile").read_text(), re.M)
    assert found, "TORCH_SPEC not found in the Makefile"
    return found[1]


MOTO = str(Path(sys.executable).parent / "moto_server")
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
S3_CREDENTIALS |= {"AWS_DEFAULT_REGION": "us-east-1"}
S3_BUCKETS = ("trials", "artifacts")


def listens(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local S3-compatible server (moto's) with the buckets `trials` and `artifacts`."""
    folder = tmp_path_factory.mktemp("s3")
    port = free_port()
    command = [MOTO, "-H", "127.0.0.1", "-p", str(port)]
    with background(command, cli_env(**S3_CREDENTIALS), folder, folder / "moto.log") as server:
        wait_until(lambda: listens(port), 60, "S3 server", folder / "moto.log", server)
        url = f"http://127.0.0.1:{port}"
        for bucket in S3_BUCKETS:
            s3_client(url).create_bucket(Bucket=bucket)
        yield url


# An existing database to connect to for creating a test's own (CI: `test`, trust auth).
ADMIN_URL = os.environ.get("PIPELINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def admin_connection() -> psycopg.Connection:
    """An autocommit connection for CREATE/DROP DATABASE; skip (or fail, under
    REQUIRE_POSTGRES=1, as in CI) when PostgreSQL cannot be reached."""
    try:
        connection = psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL at {ADMIN_URL}: {str(exc).strip()}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return connection


@pytest.fixture()
def postgres() -> str:
    """The URL of the PostgreSQL the tests use (skipped where there is none, failed under
    REQUIRE_POSTGRES=1)."""
    admin_connection().close()
    return ADMIN_URL


def require_private_mounts(why: str) -> None:
    """Skip unless this user may give a process its own mount namespace (`unshare --mount`;
    root in a container may); under REQUIRE_UNSHARE=1 (CI, which can) fail instead."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if done.returncode != 0:
        reason = f"needs `unshare --mount` to {why}"
        if os.environ.get("REQUIRE_UNSHARE") == "1":
            pytest.fail(f"REQUIRE_UNSHARE=1 but the test {reason}")
        pytest.skip(reason)
