"""The lock in the tracking store, on a real SQLite store and real processes: one holder at a
time, a dead holder taken over, a silent remote one only once its heartbeat is stale."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.tracking.locks import LOCK_PREFIX, LockHeld, StoreLock
from pipeline.tracking.store import Client, open_client
from tests.conftest import cli_env

KEY = "nightly.space"
# Holds the lock until its stdin closes, saying so on stdout.
HOLDER = """
import sys
from pipeline.tracking.locks import StoreLock, LockHeld
from pipeline.tracking.store import open_client
lock = StoreLock(open_client(sys.argv[1]), sys.argv[2], heartbeat_s=0.2)
try:
    lock.acquire()
except LockHeld as held:
    print("refused", held.holder.pid, flush=True)
    sys.exit(75)
print("held", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"""


@pytest.fixture()
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture()
def client(store: str) -> Client:
    return open_client(store)


def holder(store: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, store, KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


@pytest.fixture()
def held(store: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock."""
    process = holder(store)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_keeps_the_lock_until_it_releases(
    client: Client, held: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockHeld, match=f"pid {held.pid} on "):
        StoreLock(client, KEY).acquire()
    assert held.stdin is not None and held.stdout is not None
    held.stdin.close()
    assert held.stdout.readline().strip() == "released"
    with StoreLock(client, KEY) as lock:
        current = lock.read()
        assert current is not None and current.id == lock.holder.id
    assert lock.read() is None, "released: the lock's model is gone"


def test_a_killed_holder_on_this_host_is_taken_over_at_once(
    client: Client, held: subprocess.Popen[str]
) -> None:
    os.kill(held.pid, signal.SIGKILL)
    held.wait()
    with StoreLock(client, KEY) as lock:
        assert lock.taken_over is not None and f"pid {held.pid}" in lock.taken_over
        assert "that process is gone" in lock.taken_over
    models = [m.name for m in client.search_registered_models()]
    assert not [m for m in models if m.startswith(LOCK_PREFIX)], "no stale copy left behind"


def remote_lock(client: Client, silent_for: float) -> None:
    """A lock held by a process on another machine, last heard of `silent_for` seconds ago."""
    tags = {"holder": "remote", "host": "another-node", "pid": "4242", "boot": "b"}
    tags |= {"since": "2026-11-28T02:00:00+00:00", "heartbeat": str(time.time() - silent_for)}
    client.create_registered_model(f"{LOCK_PREFIX}{KEY}", tags=tags)


def test_a_remote_holder_is_waited_for_while_its_heartbeat_is_fresh(client: Client) -> None:
    remote_lock(client, silent_for=30)
    with pytest.raises(LockHeld, match="pid 4242 on another-node"):
        StoreLock(client, KEY, stale_after_s=120).acquire()


def test_a_remote_holder_silent_too_long_is_taken_over(client: Client) -> None:
    remote_lock(client, silent_for=200)
    with StoreLock(client, KEY, stale_after_s=120) as lock:
        assert lock.taken_over is not None
        silent = re.search(r"no heartbeat for (\d+) s", lock.taken_over)
        # 200 s when the lock was written, plus however long this test took to read it.
        assert silent is not None and 200 <= int(silent[1]) < 260, lock.taken_over


def test_the_holder_heartbeats(client: Client, held: subprocess.Popen[str]) -> None:
    lock = StoreLock(client, KEY)
    first = lock.read()
    time.sleep(1.0)  # five heartbeats at 0.2 s
    later = lock.read()
    assert first is not None and later is not None
    assert later.heartbeat > first.heartbeat and later.id == first.id


def test_of_two_contenders_for_a_stale_lock_one_wins(store: str, client: Client) -> None:
    remote_lock(client, silent_for=10_000)
    contenders = [holder(store) for _ in range(2)]
    said = []
    for process in contenders:
        assert process.stdout is not None
        said.append(process.stdout.readline().split()[0])
    for process in contenders:
        process.kill()
        process.wait()
    assert sorted(said) == ["held", "refused"]
