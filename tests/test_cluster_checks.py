"""Checks before a sweep touches the cluster: a bad or unreachable Ray address fails at once,
with the deadline passed to the connection attempt; an unreachable cluster or tracking server,
or trials asking for GPUs the cluster lacks, are refused in one line before anything is written;
what workers print reaches the console only with --verbose; a local Ray started in the
background (as `tune` starts it while it imports the rest) serves its driver until it is left."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from pipeline.distributed import cluster
from pipeline.errors import PipelineError
from tests.conftest import SPACES, cli_env, free_port, listens, refused_tune, run_in_process


def test_an_unreachable_head_is_refused_within_the_reach_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts: list[float] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], timeout: float) -> Any:
        timeouts.append(timeout)
        return real(address, timeout=timeout)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    port = free_port()
    with pytest.raises(PipelineError, match=f"cannot reach the Ray head at 127.0.0.1:{port}"):
        cluster.check_ray_address(f"127.0.0.1:{port}")
    assert timeouts == [cluster.REACH_TIMEOUT_S]


@pytest.mark.parametrize("address", ["localhost", "10.0.0.5:", "ray://head:port"])
def test_a_malformed_address_is_named(address: str) -> None:
    with pytest.raises(PipelineError, match=f"Ray address {address!r}: expected host:port"):
        cluster.check_ray_address(address)


def test_auto_and_local_are_not_probed() -> None:
    cluster.check_ray_address("auto")
    cluster.check_ray_address("local")


def closed_port() -> int:
    port = free_port()
    assert not listens(port)
    return port


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"RAY_ADDRESS": "127.0.0.1:{port}"}, "cannot reach the Ray head at 127.0.0.1:{port}"),
        ({"RAY_ADDRESS": "no-such-host.invalid:6380"}, "cannot reach the Ray head at no-such"),
        (
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
            "MLflow tracking server http://127.0.0.1:{port} cannot be reached",
        ),
    ],
)
def test_unreachable_cluster_or_tracking_server_fails_fast_and_writes_nothing(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    # How quickly they give up is the deadlines' business (tests/test_tracking_preflight.py and
    # the reach test above); here: one clear line, nothing written. In this process: each is
    # refused before Ray is started or joined.
    port = closed_port()
    settings = {k: v.format(port=port) for k, v in settings.items()}
    done = run_in_process(tmp_path, "tune", "--space", str(SPACES / "smoke.yaml"), **settings)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in done.stderr, said
    assert said.startswith("error: ") and message.format(port=port) in said
    assert not list(tmp_path.rglob("mlflow.db")) and not (tmp_path / "mlruns" / "ray").exists()


@pytest.mark.slow
def test_trials_asking_for_a_gpu_the_cluster_lacks_are_refused(tmp_path: Path) -> None:
    import torch

    have = torch.cuda.device_count()  # what a local Ray finds on this machine
    asked = "0.25" if have == 0 else str(have + 1)
    message = refused_tune(tmp_path, "--set", f"resources.gpus={asked}")
    assert (
        f"each trial asks for GPU {asked} (resources in the space) but the Ray cluster has "
        f"{have} GPU" in message
    )
    assert not list(tmp_path.rglob("mlflow.db"))


# A Ray worker printing to stderr under the CLI's console set-up, on a real local Ray. The driver
# says "spoken" once the task has run and keeps Ray up until its stdin closes.
WORKER_PRINTS = """
import sys
from rich.console import Console
from pipeline.cli.environment import configure
configure(Console(stderr=True), debug=False, verbose=sys.argv[1] == "verbose")
import ray  # after `configure`, as in the CLI: Ray reads its settings on import
from pipeline.distributed import cluster
cluster.connect(None)
@ray.remote
def speak() -> None:
    print("worker says hello", file=sys.stderr, flush=True)
ray.get(speak.remote())
print("spoken", flush=True)
sys.stdin.readline()
ray.shutdown()
"""
WORKER_LINE = "worker says hello"
# How long the driver has to echo the worker's line: Ray's log monitor forwards about every
# 100 ms, far slower under a loaded CI machine.
FORWARD_WAIT_S = 60.0
# How long a quiet driver is watched for the line after the task has run.
QUIET_WATCH_S = 5.0
# How long the driver may take to start Ray and run the task, and to shut Ray down.
START_WAIT_S = 180.0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_worker_output_reaches_the_console_only_when_verbose(mode: str) -> None:
    """A worker that Ray stops may print a traceback from Ray's own SIGTERM handler; the
    driver echoes what workers print only with --verbose."""
    driver = subprocess.Popen(
        [sys.executable, "-c", WORKER_PRINTS, mode],
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None and driver.stderr is not None
    lines: list[str] = []
    spoken, echoed = threading.Event(), threading.Event()

    def collect(stream: IO[str], marker: str, seen: threading.Event) -> None:
        # Both pipes are drained to the end, so the driver never blocks on a full one.
        for line in stream:
            lines.append(line)
            if marker in line:
                seen.set()

    collectors = [
        threading.Thread(target=collect, args=(driver.stdout, "spoken", spoken), daemon=True),
        threading.Thread(target=collect, args=(driver.stderr, WORKER_LINE, echoed), daemon=True),
    ]
    for collector in collectors:
        collector.start()
    try:
        assert spoken.wait(START_WAIT_S), "".join(lines)[-3000:]
        echoed.wait(FORWARD_WAIT_S if mode == "verbose" else QUIET_WATCH_S)
        driver.stdin.close()
        assert driver.wait(timeout=START_WAIT_S) == 0, "".join(lines)[-3000:]
    finally:
        driver.kill()
    for collector in collectors:
        collector.join(timeout=10)
    assert echoed.is_set() == (mode == "verbose"), "".join(lines)[-3000:]


# A local Ray started in the background while a block runs that fails: the block's error is the
# one raised, the start is taken over (nothing left for a later `connect` to trip on), and Ray's
# processes outlive the thread that started them until Ray is left, which releases it. An error
# of ours that a task raises reaches the driver as itself.
BACKGROUND_START = """
import threading, time
import ray
from pipeline.distributed import cluster
from pipeline.errors import PipelineError
try:
    with cluster.connecting_in_background(None):
        raise LookupError("refused while Ray starts")
except LookupError as exc:
    print("raised:", exc)
print("left to take over:", len(cluster.starting), "held:", len(cluster.holding))
cluster.connect(None)
time.sleep(2)  # a process fate-sharing with an ended thread would be gone by now
@ray.remote
def answer() -> int:
    return 42
print("task:", ray.get(answer.remote(), timeout=60))
def refuse() -> None:
    raise PipelineError("refused on a worker")
try:
    cluster.run_remote(refuse, 1, 0)
except PipelineError as exc:
    print("remote error:", type(exc).__name__, str(exc))
cluster.disconnect_in_background()
cluster.wait_disconnected()
time.sleep(0.5)
print("held after leaving:", len(cluster.holding), "start thread alive:",
      any(t.name == "ray-start" for t in threading.enumerate()))
"""


@pytest.mark.slow
def test_ray_started_in_the_background_serves_its_driver_until_left() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BACKGROUND_START],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=START_WAIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "raised: refused while Ray starts",
        "left to take over: 0 held: 1",
        "task: 42",
        "remote error: PipelineError refused on a worker",  # its line, not Ray's traceback
        "held after leaving: 0 start thread alive: False",
    ], done.stdout + done.stderr[-3000:]
    assert "SIGTERM handler is not set" not in done.stderr
