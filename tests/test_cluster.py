"""A real two-node Ray cluster run as the node image runs it: `ray start --head` plus a second
`ray start --address` node, with token authentication, from a fresh venv of the image's
package set (the `cluster` extra, Ray's dashboard included). KubeRay's probes find both nodes
healthy; the entrypoints of rayjob.yaml and of the nightly CronJob run as Ray jobs; smoke.yaml
runs through the CLI from a driver outside over three nodes, one of which dies. A driver with
the wrong token, and storage a node cannot see, are refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import image_envs
from tests.conftest import (
    REPO,
    SPACES,
    background,
    cli_env,
    free_port,
    one_worker,
    private_mounts,
    refused_tune,
    require_private_mounts,
    run_cli,
    wait_until,
)

pytestmark = [pytest.mark.slow, one_worker("cluster")]
SMOKE = str(SPACES / "smoke.yaml")
IMAGE_ROOT = "/home/ray/hpo-pipeline/"  # where deploy/Dockerfile puts the repository


@dataclass
class Cluster:
    address: str
    auth: dict[str, str]  # what a driver needs: token mode and where the token is
    logs: Path
    folder: Path  # the nodes' working directory (the image's /home/ray/hpo-pipeline)
    dashboard: str  # http://host:port of the head's dashboard (KubeRay: 8265)
    agent_ports: list[int]  # each node's dashboard agent (KubeRay: 52365)
    env: dict[str, str]  # the nodes' environment: the image's PATH first
    ray: str  # the image's `ray`
    driver_only: Path  # a folder of the driver's that reads empty on every node


def without(folder: Path, command: list[str]) -> list[str]:
    """`command` run where `folder` is an empty tmpfs (like a folder of another machine), when
    this user may mount; else as it is."""
    if not private_mounts():
        return command
    hidden = f"mount -t tmpfs none {folder} && exec {shlex.join(command)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", hidden]


def node_image() -> Path:
    """The bin folder of a venv with the node image's packages (deploy/Dockerfile)."""
    return image_envs.build("ray-node")


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cluster_status(command: list[str], env: dict[str, str]) -> str:
    """What `ray status` says of the cluster (resources in use / in all, nodes)."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def started(log: Path) -> bool:
    """`ray start` says so once its node has joined the cluster."""
    return log.exists() and "Ray runtime started" in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "search_spaces").symlink_to(SPACES)  # the image's working directory holds them
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port, dashboard, agents = free_port(), free_port(), [free_port(), free_port()]
    # A temp dir of its own keeps this cluster's session apart from any local Ray of other tests.
    temp_dir = Path("/tmp") / f"ray-test-{secrets.token_hex(4)}"
    bin_folder = node_image()
    ray = str(bin_folder / "ray")
    env = image_envs.running_env(bin_folder, cli_env(**auth))  # a job's `python`: the image's
    node = [ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats"]
    driver_only = folder / "driver-only"
    driver_only.mkdir()
    with ExitStack() as stack:
        head = [*node, "--head", "--port", str(port), "--temp-dir", str(temp_dir)]
        head += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
        head += [
            "--dashboard-port",
            str(dashboard),
            "--dashboard-agent-listen-port",
            str(agents[0]),
        ]
        head = without(driver_only, head)
        stack.enter_context(background(head, env, folder, folder / "head.log"))
        wait_until(lambda: accepts(port), 60, "ray head", folder / "head.log")
        worker = [*node, "--address", f"127.0.0.1:{port}"]
        worker += ["--dashboard-agent-listen-port", str(agents[1])]
        worker = without(driver_only, worker)
        stack.enter_context(background(worker, env, folder, folder / "worker.log"))
        wait_until(lambda: started(folder / "worker.log"), 60, "second node", folder / "worker.log")
        # Started is not yet schedulable: wait until the head counts both nodes' CPUs.
        status = [ray, "status", "--address", f"127.0.0.1:{port}"]
        wait_until(lambda: "0.0/2.0 CPU" in cluster_status(status, env), 60, "both nodes' CPUs")
        yield Cluster(
            f"127.0.0.1:{port}",
            auth,
            temp_dir,
            folder,
            f"http://127.0.0.1:{dashboard}",
            agents,
            env,
            ray,
            driver_only,
        )
    assert not accepts(port), "the head still listens after the test"
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_storage_a_node_cannot_see_is_refused_before_the_sweep(
    cluster: Cluster, tmp_path: Path
) -> None:
    require_private_mounts("give a node a private view of the storage folder")
    storage = tmp_path / "storage"
    storage.mkdir()
    # A third node whose /storage is an empty tmpfs: like a local folder on another machine.
    node3 = [cluster.ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats"]
    command = without(storage, [*node3, "--address", cluster.address])
    log = tmp_path / "node3.log"
    with background(command, cli_env(**cluster.auth), tmp_path, log) as node:
        wait_until(lambda: started(log), 60, "third node", log, node)
        message = refused_tune(
            tmp_path, RAY_ADDRESS=cluster.address, PIPELINE_STORAGE=str(storage), **cluster.auth
        )
    assert f"trial storage {storage} is not shared: 1 of 3 Ray nodes cannot see it" in message
    assert not list(tmp_path.rglob("mlflow.db")) and not list(storage.iterdir())


def user_space(folder: Path) -> Path:
    """smoke.yaml tuning a user's network (examples/wine_table's residual MLP), whose package is
    copied to a folder of the driver's: `folder`/user/src."""
    code = folder / "user" / "src"
    shutil.copytree(REPO / "examples" / "wine_table" / "src", code)
    raw = yaml.safe_load(Path(SMOKE).read_text())
    raw["code"] = {"paths": [str(code)]}
    raw["model"] = {"builder": "wine_example.nets:build"}
    raw["search"].pop("points_to_evaluate")
    raw["params"] = {
        "lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
        "width": {"type": "choice", "values": [16, 32]},
        "blocks": {"type": "int", "low": 1, "high": 2},
        "optimizer": "adam",
        "batch_size": 32,
    }
    space = folder / "user" / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    return space


# The user's residual MLP, each training step paced: a sweep's trials last as long as many
# epochs of a larger job, while the test's machine does the work of a small one.
PACED = """
import time

from torch import nn

from wine_example import nets


class Paced(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x):
        if self.training:
            time.sleep(0.03)
        return self.network(x)


def build(spec, **params):
    return Paced(nets.build(spec, **params))
"""


def pace(space: Path) -> None:
    """The user space at `space` trains PACED's network instead of the residual MLP itself."""
    (space.parent / "src" / "wine_example" / "paced.py").write_text(PACED)
    raw = yaml.safe_load(space.read_text())
    raw["model"] = {"builder": "wine_example.paced:build"}
    space.write_text(yaml.safe_dump(raw))


def test_code_a_node_cannot_import_is_refused_before_the_sweep(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The user's package ships with the job, but a module it imports is on the driver's path
    only (as a library installed on the driver and on no node would be): refused, naming the
    node and the module, before anything is written."""
    space = user_space(tmp_path)
    nets = tmp_path / "user" / "src" / "wine_example" / "nets.py"
    nets.write_text(nets.read_text() + "\nimport driver_only_helper  # noqa: E402\n")
    (tmp_path / "driver_only").mkdir()
    (tmp_path / "driver_only" / "driver_only_helper.py").write_text("")
    done = run_cli(
        tmp_path,
        "tune",
        "--space",
        str(space),
        timeout=120,
        RAY_ADDRESS=cluster.address,
        PYTHONPATH=f"{REPO}:{tmp_path / 'driver_only'}",
        **cluster.auth,
    )
    message = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(r"^error: Ray node [0-9.]+ \([0-9a-f]{8}\) cannot import", message)
    assert (
        "cannot import the job's code: model.builder wine_example.nets:build: importing "
        "'wine_example.nets' failed: ModuleNotFoundError: No module named 'driver_only_helper'"
    ) in message
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_driver_with_the_wrong_token_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    message = refused_tune(
        tmp_path,
        RAY_ADDRESS=cluster.address,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN="not-the-cluster-token",
        # Ray asks 20 times, about 1 s apart, before it gives up on the refused connection;
        # 2 times give the same refusal.
        RAY_NUM_REDIS_GET_RETRIES="2",
    )
    # Ray's own words for the refused connection (it logs "InvalidAuthToken" only to stderr),
    # then the hint; another failure on the way does not earn the hint.
    assert f"cannot connect to Ray at {cluster.address}: Failed to connect to Ray cluster at" in (
        message
    )
    assert "give this driver the cluster's token in RAY_AUTH_TOKEN" in message
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_kuberays_probes_find_both_nodes_healthy(cluster: Cluster) -> None:
    """What KubeRay's readiness and liveness probes ask: the unified health check of KubeRay >=
    1.6 with Ray >= 2.53 (HTTP GET /api/healthz on each node's dashboard agent), and the wget
    checks of older KubeRay (raylet health on each node, GCS health on the head)."""
    for port in cluster.agent_ports:
        assert fetch(f"http://127.0.0.1:{port}/api/healthz")[0] == 200
        assert "success" in fetch(f"http://127.0.0.1:{port}/api/local_raylet_healthz")[1]
    assert "success" in fetch(f"{cluster.dashboard}/api/gcs_healthz")[1]


def manifest(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "deploy" / "kuberay" / name).read_text()))


def in_this_cluster(words: list[str], cluster: Cluster) -> list[str]:
    """A manifest's command for this test's cluster: the smoke space instead of the default, the
    image's paths relative to the nodes' working directory, this cluster's dashboard."""
    words = [w.removeprefix(IMAGE_ROOT).replace("default.yaml", "smoke.yaml") for w in words]
    words = [w.replace("$(NIGHT_ID)", "test") for w in words]
    if "--address" in words:
        words[words.index("--address") + 1] = cluster.dashboard
    return words


def test_rayjob_and_nightly_cronjob_entrypoints_run_as_ray_jobs(cluster: Cluster) -> None:
    """The RayJob's entrypoint submitted as KubeRay's submitter does (`ray job submit`), then
    the nightly CronJob's command as it stands: each sweep finishes and registers a version."""
    rayjob = shlex.split(manifest("rayjob.yaml")["spec"]["entrypoint"])
    submit = [cluster.ray, "job", "submit", "--address", cluster.dashboard, "--", *rayjob]
    cronjob = manifest("nightly-cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]
    [container] = cronjob["spec"]["containers"]
    nightly = in_this_cluster(container["command"], cluster)
    assert nightly[:3] == ["ray", "job", "submit"]
    env = {**cluster.env, **cluster.auth}
    for command in (in_this_cluster(submit, cluster), [cluster.ray, *nightly[1:]]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert "succeeded" in done.stdout + done.stderr
    store = MlflowClient(f"sqlite:///{cluster.folder / 'mlruns' / 'mlflow.db'}")
    versions = store.search_model_versions("name = 'smoke-digits-mlp'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert store.get_model_version_by_alias("smoke-digits-mlp", "champion").version in (2, "2")


def reported_epochs(sweeps: Path) -> dict[str, int]:
    """Trial folder -> epochs it has reported so far (Ray's result.json, written by the driver)."""
    return {
        result.parent.name: len(result.read_text().splitlines())
        for result in sweeps.glob("smoke-*/run_trial_*/result.json")
    }


def test_a_sweep_over_three_nodes_loses_one_and_still_costs_no_trial_and_no_epoch(
    cluster: Cluster, tmp_path: Path
) -> None:
    """smoke.yaml tuning a user's network from a package in a driver folder that no node has
    (an empty tmpfs on each), from a driver outside the cluster, its trials over three nodes;
    the third dies (SIGKILL of it and its workers) while each node runs a trial. The sweep
    finishes on the two left: the lost trial resumes from its checkpoint, its epochs never go
    backwards, there is one run per trial, each tagged with the node it ran on; the second
    opinions and the retrain run on the cluster and the version is registered; the trial state
    is in the configured storage."""
    require_private_mounts("give the nodes a view without the user's code folder")
    # The package's folder reads empty on every node: they import what the job shipped.
    space = user_space(cluster.driver_only / tmp_path.name)
    assert space.exists()
    log = tmp_path / "node3.log"
    node3 = [cluster.ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats"]
    hidden = without(cluster.driver_only, [*node3, "--address", cluster.address])
    # Three trials of about 20 s, so that all three are surely under way at once, one per node
    # (trials of 5 s could end on the head before the third node's first worker had started):
    # the user's network waits in each training step (PACED), not three cores' worth of work
    # on this machine's two. Its first build took 5-fold trials of all of digits instead.
    pace(space)
    epochs, samples = 40, 3
    longer = ["--set", f"budget.max_epochs={epochs}"]
    longer += ["--set", "scheduler.name=fifo", "--set", "budget.max_concurrent=3"]
    longer += ["--set", f"budget.num_samples={samples}", "--set", "budget.max_failures=2"]
    longer += ["--set", "search.n_initial_points=2", "--set", "budget.checkpoint_seconds=0"]
    sweeps = tmp_path / "mlruns" / "ray"
    env = cli_env(RAY_ADDRESS=cluster.address, **cluster.auth)
    with background(hidden, cli_env(**cluster.auth), tmp_path, log) as node:
        wait_until(lambda: started(log), 60, "third node", log, node)
        status = [cluster.ray, "status", "--address", cluster.address]
        wait_until(lambda: "/3.0 CPU" in cluster_status(status, cluster.env), 60, "3 nodes' CPUs")
        args = [sys.executable, "-m", "pipeline", "tune", "--space", str(space)]
        with background([*args, *longer], env, tmp_path, tmp_path / "tune.log") as driver:
            # Three trials under way, one per node: one of them runs on the third node.
            wait_until(
                lambda: sum(2 <= n < epochs for n in reported_epochs(sweeps).values()) >= 3,
                240,
                "three trials under way",
                tmp_path / "tune.log",
                driver,
            )
            os.killpg(node.pid, signal.SIGKILL)
            driver.wait(timeout=600)
    output = (tmp_path / "tune.log").read_text()
    assert driver.returncode == 0, output[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(trials) == len({t.data.tags["trial_id"] for t in trials}) == samples
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["trial_state"] == "completed"
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_acc")]
        assert steps == list(range(1, epochs + 1)), "every epoch once, in order"
    # Each trial run names the Ray node it ran on (its last, for the resumed one): all three.
    nodes = {t.data.tags["node_id"] for t in trials}
    assert len(nodes) >= 2, f"trials ran on {nodes}"
    assert all(len(n) == 56 for n in nodes)  # Ray node ids, not empty tags
    assert {t.data.tags["host"] for t in trials} == {socket.gethostname()}
    # Ray recorded the failure of the lost node's trial, which then finished from a checkpoint.
    failed = list(sweeps.glob("smoke-*/run_trial_*/error.txt"))
    assert failed, "no trial saw its node die"
    # That trial trained on the node without the user's folder before the node died.
    assert all(len((e.parent / "result.json").read_text().splitlines()) >= 2 for e in failed)
    for error in failed:
        lines = [json.loads(x) for x in (error.parent / "result.json").read_text().splitlines()]
        reported = [r["epoch"] for r in lines]
        assert reported[-1] == epochs and len(set(reported)) == epochs, "finished, every epoch"
        assert len(reported) < 2 * epochs, "resumed from a checkpoint, not from the start"
    # The retrain ran as a Ray task on the cluster; its model is the challenger.
    [retrain] = [r for r in runs if r.info.run_name == "retrain"]
    assert retrain.info.status == "FINISHED" and retrain.data.metrics["test_acc"] > 0.5
    challenger = client.get_model_version_by_alias("smoke-digits-mlp", "challenger")
    assert str(challenger.version) == "1"
    assert challenger.tags["builder"] == "wine_example.paced:build"
    # Trial state went to the configured storage (one machine here: shared by the nodes).
    assert list(sweeps.glob("smoke-*/*/params.json"))
