"""The tracking server as deployed, on real parts: the server image's package set (a fresh venv
from the `server` extra, as deploy/mlflow/Dockerfile installs it) running
deploy/mlflow/entrypoint.sh; two replicas started at once on one empty PostgreSQL database;
MLflow's basic auth; artifacts on an S3-compatible store (moto's server). A sweep (trial state
on that store too), its retrain, promote and predict go through it; mid-sweep, the database
goes away for longer than MLflow's own retries last (its connections cut and new ones refused,
as a restart or failover does to its clients) and comes back: nothing is lost. Then `python -m
pipeline mlflow-server` (make mlflow-server) with basic auth."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.ui_page import preference_script
from tests import image_envs
from tests.conftest import (
    ADMIN_URL,
    REPO,
    S3_CREDENTIALS,
    SPACES,
    admin_connection,
    background,
    cli_env,
    descendants,
    free_port,
    one_worker,
    run_cli,
    s3_client,
    s3_keys,
    wait_until,
)

pytestmark = [pytest.mark.slow, one_worker("servers")]
ENTRYPOINT = REPO / "deploy" / "mlflow" / "entrypoint.sh"
MODEL = "smoke-digits-mlp"
TRIALS = 3  # of the sweep run through the server
# How long its database is away mid-sweep: past MLflow's own retries of a request (about 7 s),
# so that the pipeline's queue and waits carry the sweep through.
OUTAGE_S = 45
ADMIN, ADMIN_PASSWORD = "admin", "c0rrect%horse:battery"  # % and : on purpose
DB_PASSWORD = "p@ss:w/rd%#?&"  # every character a URL must encode
# The Host headers users send: a pod's IP, the Service's names, a port-forward.
USER_HOSTS = ["10.1.2.3:5000", "mlflow:5000", "mlflow.default:5000"]
USER_HOSTS += ["mlflow.default.svc.cluster.local:5000", "localhost:5000"]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """An empty database owned by a role whose password needs URL-encoding; its URL."""
    connection = admin_connection()
    name = f"mlflow_test_{secrets.token_hex(4)}"
    connection.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{DB_PASSWORD}'")
    connection.execute(f"CREATE DATABASE {name} OWNER {name}")
    host = ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql://{name}:{urllib.parse.quote(DB_PASSWORD, safe='')}@{host}/{name}"
    finally:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"DROP ROLE IF EXISTS {name}")
        connection.close()


def get(url: str, host: str | None = None, login: tuple[str, str] | None = None) -> int:
    """The HTTP status of GET `url`, with a Host header and basic-auth login if given."""
    return fetch(url, host, login)[0]


def fetch(
    url: str, host: str | None = None, login: tuple[str, str] | None = None
) -> tuple[int, str]:
    """The HTTP status and body of GET `url`, with a Host header and basic-auth login if
    given (0 and no body when nothing answered)."""
    headers = {"Host": host} if host else {}
    if login:
        token = base64.b64encode(":".join(login).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        # Generous: a login's first request hashes the password and opens the store, which
        # took over 10 s on a loaded 2-core machine.
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def opens_on_runs(page: str) -> bool:
    """Whether a served UI page sets MLflow's view to model training before its app starts
    (tests/test_ui.py shows what that does in a browser)."""
    script = preference_script()
    return script in page and page.index(script) < page.index("static/js/main.")


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@dataclass
class Deployment:
    replicas: list[str]  # the servers' URIs
    pids: list[int]  # their processes
    database_url: str
    s3: str
    logs: list[Path]
    server_env: dict[str, str]

    @property
    def client_env(self) -> dict[str, str]:
        """What a client of the deployment sets."""
        login = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
        return {"MLFLOW_TRACKING_URI": self.replicas[0], **login, **self.storage_env}

    @property
    def storage_env(self) -> dict[str, str]:
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.s3}


def server_env(bin_folder: Path, database_url: str, s3: str, port: int) -> dict[str, str]:
    """The container's environment: the image's PATH, nothing of this test process's."""
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return {
        **image_envs.running_env(bin_folder, bare),
        "MLFLOW_BACKEND_STORE_URI": database_url,
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://artifacts/mlflow",
        "MLFLOW_ADMIN_USERNAME": ADMIN,
        "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_HOST": "127.0.0.1",
        "MLFLOW_SERVER_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow,mlflow:*,mlflow.*",  # as deploy/mlflow/k8s.yaml
        **S3_CREDENTIALS,
        "AWS_ENDPOINT_URL": s3,
    }


@pytest.fixture(scope="module")
def deployment(
    database: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    bin_folder = image_envs.build("mlflow-server")
    folder = tmp_path_factory.mktemp("deployment")
    ports = [free_port(), free_port()]
    logs = [folder / f"replica{i}.log" for i in range(2)]
    envs = [server_env(bin_folder, database, s3_endpoint, port) for port in ports]
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(background(["/bin/sh", str(ENTRYPOINT)], env, folder, log))
            for env, log in zip(envs, logs, strict=True)
        ]  # both at once, on the empty database
        uris = [f"http://127.0.0.1:{port}" for port in ports]
        for uri, log, process in zip(uris, logs, replicas, strict=True):
            wait_until(lambda u=uri: get(f"{u}/health") == 200, 180, "replica", log, process)
        yield Deployment(uris, [p.pid for p in replicas], database, s3_endpoint, logs, envs[0])
        for process, log in zip(replicas, logs, strict=True):
            assert process.poll() is None, f"a replica died: {log.read_text()[-2000:]}"


def test_two_replicas_started_at_once_on_an_empty_database_both_serve(
    deployment: Deployment,
) -> None:
    for uri in deployment.replicas:
        assert get(f"{uri}{SEARCH}", login=(ADMIN, ADMIN_PASSWORD)) == 200
    # Without MLflow's server jobs: no huey consumer beside the web workers.
    for pid in deployment.pids:
        processes = descendants(pid)
        assert processes and not [p for p in processes if "huey" in p], processes


def test_the_host_headers_users_send_are_answered_and_others_refused(
    deployment: Deployment,
) -> None:
    uri = deployment.replicas[0]
    for host in USER_HOSTS:
        assert get(f"{uri}/health", host) == 200, host
        assert get(f"{uri}{SEARCH}", host, (ADMIN, ADMIN_PASSWORD)) == 200, host
    assert get(f"{uri}{SEARCH}", "attacker.example:5000", (ADMIN, ADMIN_PASSWORD)) == 403


def test_basic_auth_takes_the_configured_admin_only(deployment: Deployment) -> None:
    uri = deployment.replicas[1]
    status, page = fetch(f"{uri}/", login=(ADMIN, ADMIN_PASSWORD))
    assert status == 200 and opens_on_runs(page), "the image's UI page opens on runs tables"
    assert get(f"{uri}{SEARCH}") == 401
    assert get(f"{uri}{SEARCH}", login=(ADMIN, ADMIN_PASSWORD)) == 200
    assert get(f"{uri}{SEARCH}", login=(ADMIN, "password1234")) == 401, "MLflow's old default"
    assert get(f"{uri}{SEARCH}", login=("intruder", ADMIN_PASSWORD)) == 401


def test_a_short_admin_password_is_refused_before_the_server_starts(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = {**deployment.server_env, "MLFLOW_ADMIN_PASSWORD": "short-pw"}
    done = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "mlflow-entrypoint: MLFLOW_ADMIN_PASSWORD has 8 characters; MLflow needs at least 12"
    )


def test_the_admin_password_rotates_when_the_environment_says_so(
    deployment: Deployment,
) -> None:
    """What the entrypoint runs before the server: with MLFLOW_ADMIN_PASSWORD_ROTATE=1 the admin
    gets the password the environment holds now; without it a changed secret does not take."""
    uri, new = deployment.replicas[0], "a-new-secret-of-20ch"
    prepare = [str(Path(deployment.server_env["PATH"].split(":")[0]) / "python")]
    prepare += [str(ENTRYPOINT.parent / "prepare.py"), "schema"]

    def run_prepare(password: str, rotate: bool) -> None:
        env = {**deployment.server_env, "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN}
        env |= {"MLFLOW_AUTH_ADMIN_PASSWORD": password}
        env |= {"MLFLOW_ADMIN_PASSWORD_ROTATE": "1"} if rotate else {}
        done = subprocess.run(prepare, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

    run_prepare(new, rotate=False)
    assert get(f"{uri}{SEARCH}", login=(ADMIN, new)) == 401
    try:
        run_prepare(new, rotate=True)
        assert get(f"{uri}{SEARCH}", login=(ADMIN, new)) == 200
        assert get(f"{uri}{SEARCH}", login=(ADMIN, ADMIN_PASSWORD)) == 401, "the old one is gone"
    finally:
        run_prepare(ADMIN_PASSWORD, rotate=True)
    assert get(f"{uri}{SEARCH}", login=(ADMIN, ADMIN_PASSWORD)) == 200


def finished_trials(database_url: str) -> int:
    """Trial runs the server's database holds FINISHED."""
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        [(count,)] = connection.execute(
            "SELECT count(*) FROM runs WHERE status = 'FINISHED' AND run_uuid IN "
            "(SELECT run_uuid FROM tags WHERE key = 'trial_id')"
        ).fetchall()
    return int(count)


def database_away(database_url: str, seconds: float) -> None:
    """The database refuses new connections and its open ones are cut, for `seconds`: what the
    server sees of a database restart or failover (the PostgreSQL that other tests share keeps
    running)."""
    name = database_url.rsplit("/", 1)[1]
    with admin_connection() as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            time.sleep(seconds)
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


@pytest.fixture(scope="module")
def cycle(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tune (trial state on the S3 store; its database away for OUTAGE_S mid-sweep) and promote
    through one replica; export and predict through the other."""
    folder = tmp_path_factory.mktemp("client")
    settings = {**deployment.client_env, "PIPELINE_STORAGE": "s3://trials/hpo"}
    # A few trials (the point is where things go, not what they learn), checkpointing every
    # epoch, so that trial state on S3 includes checkpoints.
    tune = ["tune", "--space", str(SPACES / "smoke.yaml"), "--set", "budget.checkpoint_seconds=0"]
    tune += ["--set", f"budget.num_samples={TRIALS}", "--set", "search.n_initial_points=1"]
    command = [sys.executable, "-m", "pipeline", *tune]
    log = folder / "tune.out"
    with background(command, cli_env(**settings), folder, log) as sweep:
        wait_until(
            lambda: finished_trials(deployment.database_url) >= 1, 300, "a trial", log, sweep
        )
        database_away(deployment.database_url, OUTAGE_S)
        assert sweep.wait(timeout=600) == 0, log.read_text()[-3000:]
    done = run_cli(folder, "promote", "--model", MODEL, **settings)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "promote.out").write_text(done.stdout + done.stderr)
    rows, output = folder / "rows.csv", folder / "predictions.csv"
    other = {**settings, "MLFLOW_TRACKING_URI": deployment.replicas[1]}
    for command in (
        ["export-test-rows", "--model", MODEL, "--output", str(rows)],
        ["predict", "--model", MODEL, "--input", str(rows), "--output", str(output)],
    ):
        done = run_cli(folder, *command, **other)
        assert done.returncode == 0, done.stderr[-3000:]
    (folder / "predict.out").write_text(done.stdout)
    return folder


@pytest.fixture()
def tracking(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of the deployment, logged in as the admin."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(deployment.replicas[0])


def test_runs_are_readable_through_the_server(tracking: MlflowClient, cycle: Path) -> None:
    experiment = tracking.get_experiment_by_name("smoke")
    runs = tracking.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "sweep_path" in r.data.tags]
    trials = [r for r in runs if "trial_id" in r.data.tags]
    [retrain] = [r for r in runs if r.info.run_name == "retrain"]
    assert parent.info.status == "FINISHED" and len(trials) == TRIALS
    assert parent.data.tags["sweep_path"].startswith("s3://trials/hpo/")
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.info.status == "FINISHED" and trial.data.params
        history = tracking.get_metric_history(trial.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert retrain.data.tags["mlflow.parentRunId"] == parent.info.run_id
    local = tracking.download_artifacts(parent.info.run_id, "trials.csv", str(cycle))
    assert Path(local).read_text().startswith("number,name,state,val_acc,epoch,trial_id,")
    # Nothing local but the spool of tracking writes, all of them delivered (an empty folder).
    assert not list(cycle.rglob("mlflow.db"))
    assert [p.name for p in (cycle / "mlruns").iterdir()] == ["spool"]
    assert not list((cycle / "mlruns" / "spool").rglob("*.jsonl"))


def test_a_database_away_mid_sweep_loses_nothing_and_is_told_in_two_lines(
    tracking: MlflowClient, deployment: Deployment, cycle: Path
) -> None:
    """The sweep went on through the outage and ended 0 (see `cycle`): each trial run holds
    every epoch Ray recorded for it in its result.json on S3, once; the console told the
    outage once when it began and once when it ended, without MLflow's retry warnings."""
    said = (cycle / "tune.out").read_text()
    began = [line for line in said.splitlines() if "tracking store unreachable since" in line]
    ended = [line for line in said.splitlines() if "tracking store back after" in line]
    assert len(began) == 1 and len(ended) == 1, said[-3000:]
    assert "Retrying (" not in said and "Traceback" not in said
    experiment = tracking.get_experiment_by_name("smoke")
    runs = tracking.search_runs([experiment.experiment_id], max_results=1000)
    s3 = s3_client(deployment.s3)
    recorded = {}
    for key in s3_keys(deployment.s3, "trials", "hpo/"):
        if key.endswith("/result.json"):
            body = s3.get_object(Bucket="trials", Key=key)["Body"].read().decode()
            lines = [json.loads(line) for line in body.splitlines()]
            recorded[lines[0]["trial_id"]] = len({line["epoch"] for line in lines})
    trials = {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}
    assert set(trials) == set(recorded)
    for trial_id, run in trials.items():
        steps = [m.step for m in tracking.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, recorded[trial_id] + 1)), (trial_id, steps)


def test_artifacts_and_trial_state_live_on_the_s3_store(
    deployment: Deployment, cycle: Path
) -> None:
    artifacts = s3_keys(deployment.s3, "artifacts", "mlflow/")
    assert [key for key in artifacts if key.endswith("/model.pt2")]
    assert [key for key in artifacts if key.endswith("/trials.csv")]
    trial_state = s3_keys(deployment.s3, "trials", "hpo/")
    assert [key for key in trial_state if key.endswith("/result.json")]
    assert [key for key in trial_state if "/checkpoint_" in key]


def test_everything_is_stored_in_postgresql(deployment: Deployment, cycle: Path) -> None:
    with psycopg.connect(deployment.database_url) as connection:
        [(runs,)] = connection.execute("SELECT count(*) FROM runs").fetchall()
        assert runs == TRIALS + 2  # parent, trials, retrain
        aliases = connection.execute("SELECT name, version FROM registered_model_aliases")
        assert aliases.fetchall() == [(MODEL, 1)]
        [(users,)] = connection.execute("SELECT count(*) FROM users").fetchall()
        assert users == 1, "one admin, created once by two replicas"


def test_a_sweep_on_a_server_prints_no_mlflow_links_per_run(cycle: Path) -> None:
    """MLflow prints "View run ... / View experiment ..." for every run ended on a server: a
    trial's, the retrain's, the parent's; our own summary says where the runs are, once."""
    said = (cycle / "tune.out").read_text()
    assert "View run" not in said and "View experiment" not in said
    assert said.count("parent run:") == 1


def test_the_other_replica_serves_the_champion(deployment: Deployment, cycle: Path) -> None:
    assert "labelled rows (logged test_acc" in (cycle / "predict.out").read_text()


def test_make_mlflow_server_with_basic_auth(database: str, tmp_path: Path) -> None:
    """`python -m pipeline mlflow-server --basic-auth` in the project's environment (make
    mlflow-server ARGS=--basic-auth): MLflow's auth extra is there, and the hosts given are
    added to MLflow's defaults."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline", "mlflow-server", "--basic-auth"]
    command += ["--workers", "1", "--allowed-hosts", "mlflow.example.org"]
    env = cli_env(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        MLFLOW_SERVER_PORT=str(port),
        MLFLOW_AUTH_ADMIN_USERNAME=ADMIN,
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    log = tmp_path / "server.log"
    with background(command, env, tmp_path, log) as server:
        wait_until(lambda: get(f"{uri}/health") == 200, 120, "mlflow-server", log, server)
        status, page = fetch(f"{uri}/#/experiments/0", login=(ADMIN, ADMIN_PASSWORD))
        assert status == 200 and opens_on_runs(page)
        assert get(f"{uri}{SEARCH}") == 401
        for host in (f"localhost:{port}", "mlflow.example.org", "10.0.0.7:5000"):
            assert get(f"{uri}{SEARCH}", host, (ADMIN, ADMIN_PASSWORD)) == 200, host
        assert get(f"{uri}{SEARCH}", "attacker.example", (ADMIN, ADMIN_PASSWORD)) == 403


def test_server_refuses_a_backend_it_cannot_open(tmp_path: Path) -> None:
    done = run_cli(
        tmp_path,
        "mlflow-server",
        MLFLOW_BACKEND_STORE_URI="postgresql://postgres:s3cret@127.0.0.1:1/none",
    )
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "backend store postgresql://postgres:***@127.0.0.1:1/none cannot be used" in message
    assert "s3cret" not in done.stderr + done.stdout
