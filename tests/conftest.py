"""Shared fixtures and helpers: the real shipped search spaces, the bundled digits data, the
CLI run as a user runs it, the run's shared smoke store, local servers and private mounts."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@contextmanager
def kept_environment() -> Iterator[None]:
    """The process environment as it was before the block, once the block ends. The CLI sets
    process-wide defaults (`environment.configure`, e.g. RAY_LOG_TO_DRIVER=0 when not verbose);
    run in-process, it would otherwise hand them to every later test in its worker, and to the
    subprocesses those start."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated_environment() -> Iterator[None]:
    """Each test sees the environment its session started with (`kept_environment`). A
    module's or the session's fixture is set up before this one saves: `run_in_process` keeps
    the environment itself."""
    with kept_environment():
        yield


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset(
        DataConfig(source="digits"), seed=0, cache_dir=Path("/nonexistent"), task="classification"
    )


@pytest.fixture(scope="session")
def digits_split(digits: Dataset) -> Split:
    return split_dataset(digits, DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="session")
def digits_tuning(digits: Dataset, digits_split: Split) -> TuningData:
    return tuning_data(digits, digits_split, shared_scale=DataConfig(source="digits").shared_scale)


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


def run_in_process(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The CLI run in this process (typer's runner) in `cwd`, on its local store unless
    `settings` name another, answering as `run_cli` does. For commands whose work is the point,
    not the process around them (which `run_cli` and test_cli.py check); never for a `tune`
    that gets as far as starting Ray (a sweep that succeeds leaves its process at once)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}", **settings}
    # Kept here too, for the callers `isolated_environment` does not cover: the fixtures of a
    # module or of the session (the smoke store's promotion left RAY_LOG_TO_DRIVER=0 to every
    # later test of its worker, and a --verbose driver those started echoed nothing).
    with kept_environment(), contextlib.chdir(cwd):
        done = CliRunner().invoke(app, list(args), env=store)
    return subprocess.CompletedProcess(list(args), done.exit_code, done.stdout, done.stderr)


def refused_tune(folder: Path, *args: str, **settings: str) -> str:
    """Run `tune` on smoke.yaml that must fail: its one-line error, whitespace normalised."""
    done = run_cli(
        folder, "tune", "--space", str(SPACES / "smoke.yaml"), *args, timeout=120, **settings
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return " ".join(done.stderr.split())


@contextmanager
def http_serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server of `handler`, on a free port, while the block runs: its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    however the block ends: SIGTERM to it first, so that it stops its own children as it does
    in service (a `ray start --block` node drains; one whose GCS was killed with it waited 30 s
    for it), then SIGKILL to whatever is left of its session."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def answers(url: str) -> bool:
    """Whether a GET of `url` succeeds (a server's /ping or /health, while it starts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[str]:
    """The command lines of the processes below `pid` (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...; comm may hold spaces and parentheses.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    below: list[int] = []
    level = {pid}
    while level:
        level = {child for child, parent in parents.items() if parent in level}
        below += sorted(level)
    return [
        Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        for child in below
    ]


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


def ray_results(storage: Path) -> int:
    """Results Ray has recorded so far in the trial folders of the sweeps under `storage`."""
    return sum(len(f.read_text().splitlines()) for f in storage.glob("*/*/result.json"))


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


def private_mounts() -> bool:
    """Whether this user may give a process its own mount namespace (`unshare --mount`; root in
    a container may)."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return done.returncode == 0


def require_private_mounts(why: str) -> None:
    """Skip unless this user may give a process its own mount namespace; under
    REQUIRE_UNSHARE=1 (CI, which can) fail instead."""
    if not private_mounts():
        reason = f"needs `unshare --mount` to {why}"
        if os.environ.get("REQUIRE_UNSHARE") == "1":
            pytest.fail(f"REQUIRE_UNSHARE=1 but the test {reason}")
        pytest.skip(reason)


def one_worker(group: str) -> pytest.MarkDecorator:
    """Mark tests to run one after another on one pytest-xdist worker (`--dist loadgroup`, make
    test): a module's end-to-end fixture (a sweep, a cluster, servers) is then built once, not
    once per worker. Each end-to-end module is a group of its own, so that modules run side by
    side (three workers on two cores: one module's start-ups and waits leave room for
    another's work)."""
    assert group in GROUPS_LONGEST_FIRST, f"add {group!r} to GROUPS_LONGEST_FIRST"
    return pytest.mark.xdist_group(group)


# The groups of `one_worker`, longest first (make test's --durations, 2 cores: cluster 530 s,
# recovery 390 s, servers 375 s, registry 310 s, nightly 250 s, examples 220 s, sweep 110 s,
# tables 80 s, ui 40 s). `make test` hands them out in this order (--no-loadscope-reorder),
# then the single tests: the longest never starts late and ends the run alone.
GROUPS_LONGEST_FIRST = (
    "cluster",
    "recovery",
    "servers",
    "outages",
    "registry",
    "nightly",
    "examples",
    "sweep",
    "tables",
    "ui",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of the longest groups first (see GROUPS_LONGEST_FIRST); each group's tests,
    and the single tests after them, keep their order."""

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("xdist_group")
        group = marker.args[0] if marker is not None and marker.args else None
        if group in GROUPS_LONGEST_FIRST:
            return GROUPS_LONGEST_FIRST.index(group)
        return len(GROUPS_LONGEST_FIRST)

    items.sort(key=rank)


SMOKE_MODEL = "smoke-digits-mlp"  # smoke.yaml's registered_model


def registry_state(client: Any, model: str) -> dict[str, Any]:
    """Everything a registry command may change of `model`: aliases, versions and their tags."""
    registered = client.get_registered_model(model)
    versions = client.search_model_versions(f"name = '{model}'")
    return {
        "aliases": {alias: str(version) for alias, version in registered.aliases.items()},
        "versions": {str(v.version): dict(v.tags) for v in versions},
    }


@dataclass(frozen=True)
class SmokeStore:
    """smoke.yaml tuned (retrained, registered) and its model promoted, once per test run, in a
    folder every worker of the run reads: what each step printed, and the registry after it."""

    folder: Path
    printed: dict[str, tuple[str, str]]  # step -> its stdout, its stderr
    registry: dict[str, dict[str, Any]]  # step -> `registry_state` after it

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlruns' / 'mlflow.db'}"

    def output(self, step: str) -> str:
        """All that a step printed: stdout, then stderr."""
        return "".join(self.printed[step])


# The steps of the smoke store, in order: a listing of the sweeps between the sweep and the
# promotion shows the version before any decision.
SMOKE_STEPS = {
    "tune": ["tune", "--space", str(SPACES / "smoke.yaml")],
    "sweeps": ["sweeps", "--experiment", "smoke", "--format", "json"],
    "promote": ["promote", "--model", SMOKE_MODEL],
}


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory: pytest.TempPathFactory) -> SmokeStore:
    """The run's smoke store, built by the first test that asks for it (under a file lock, for
    xdist's other workers), read by the others: test_sweep and test_ui look at the same sweep
    and model instead of each tuning and promoting its own."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's
    folder, record = shared / "smoke-store", shared / "smoke-store.json"
    with (shared / "smoke-store.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not record.exists():
            folder.mkdir(exist_ok=True)
            client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
            printed, registry = {}, {}
            for step, args in SMOKE_STEPS.items():
                # The sweep in a process of its own, as a user runs it; the rest in this one.
                done = run_cli(folder, *args) if step == "tune" else run_in_process(folder, *args)
                assert done.returncode == 0, f"{step}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
                printed[step] = (done.stdout, done.stderr)
                registry[step] = registry_state(client, SMOKE_MODEL)
            record.write_text(json.dumps({"printed": printed, "registry": registry}))
    built = json.loads(record.read_text())
    printed = {step: (out, err) for step, (out, err) in built["printed"].items()}
    return SmokeStore(folder, printed, built["registry"])


class PrivateCrontab:
    """Debian's real `crontab` command, with a spool of the test's own: each command runs in a
    private mount namespace where /var/spool/cron/crontabs is `spool`, so that the crontab of
    whoever runs the tests is never read or changed."""

    SPOOL = "/var/spool/cron/crontabs"

    def __init__(self, spool: Path) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        self.spool = spool

    def wrap(self, command: list[str]) -> list[str]:
        """`command`, run with this spool."""
        inner = f'mount --bind "$0" {self.SPOOL} && exec "$@"'
        private = ["unshare", "--mount", "--propagation", "private"]
        return [*private, "sh", "-c", inner, str(self.spool), *command]

    def lines(self) -> list[str]:
        """What `crontab -l` lists (no crontab yet: nothing)."""
        done = subprocess.run(self.wrap(["crontab", "-l"]), capture_output=True, text=True)
        return done.stdout.splitlines() if done.returncode == 0 else []

    def write(self, lines: list[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        subprocess.run(self.wrap(["crontab", "-"]), input=text, text=True, check=True)


def private_crontab(spool: Path) -> PrivateCrontab:
    """A crontab of the test's own (see `PrivateCrontab`): skipped without `crontab` (make
    install-cron) or without the right to a private mount, failed instead under REQUIRE_UNSHARE
    (CI)."""
    require_private_mounts("give the scheduling test a crontab of its own")
    if shutil.which("crontab") is None:
        reason = "no `crontab` command here (make install-cron)"
        if os.environ.get("REQUIRE_UNSHARE") == "1":
            pytest.fail(f"REQUIRE_UNSHARE=1 but {reason}")
        pytest.skip(reason)
    return PrivateCrontab(spool)
