"""The tracking store: the one place that builds MLflow's client, checks a server answers, and
finds or creates an experiment."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from pipeline.errors import PipelineError, StoreAway, StoreUnreachable, first_line
from pipeline.tracking.preflight import check_tracking_store

log = logging.getLogger(__name__)

Client = MlflowClient  # what the functions of this package take; callers never build one


def open_client(tracking_uri: str, *, patience: float = 0.0) -> Client:
    """A client of the tracking store (and its model registry) at `tracking_uri`, checked first
    (see `check_tracking_store`). With `patience`, each of its calls waits that many seconds
    for a store that goes away meanwhile (see `PatientClient`)."""
    check_tracking_store(tracking_uri)
    database = make_local_store(tracking_uri)
    if database is None:
        return PatientClient(tracking_uri, patience)
    OPEN_SQLITE.install()
    # Two commands opening a new SQLite store at once would both create (or migrate) its tables
    # and fail; one at a time, the second finds them made.
    with (database.parent / f".{database.name}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        client = PatientClient(tracking_uri, patience)
        client.search_registered_models(max_results=1)  # opens the registry's side too
    return client


# MLflow's error codes for a store that is away or overloaded, not for what was asked of it.
AWAY_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
)


def unreachable(error: BaseException) -> bool:
    """Whether a store call failed for want of the store (a server restarting or overloaded, its
    database away), so that the same call may work later; not for what it asked."""
    if isinstance(error, MlflowException):
        if error.error_code in AWAY_CODES:  # a database store's lost connection, a 503, a 429
            return True
        # A server that never answered, after MLflow's own retries (refused, reset, timed out,
        # or 5xx every time).
        said = str(error.message)
        return said.startswith("API request to") and "failed with" in said and "exception" in said
    return isinstance(error, (OSError, exc.OperationalError))


MAX_BACKOFF_S = 30.0  # the longest wait between two tries of a call while the store is away

# Words of a failure to reach the store at all: the request never left, so even a call that
# creates something may be sent again (MLflow's "Max retries exceeded ... NewConnectionError",
# a database that refused the connection or is starting up).
NEVER_SENT = (
    "NewConnectionError",
    "Connection refused",
    "Failed to establish a new connection",
    "could not connect",
    "the database system is starting up",
    "the database system is shutting down",
)


def may_wait_for(method: str, error: BaseException) -> bool:
    """Whether a call of `method` that failed with `error` may be made again once the store is
    back: any call that failed for want of the store (`unreachable`), except that one that
    creates something (a run, a version, a lock) only when its request never reached the
    store, lest it be made twice."""
    if not unreachable(error):
        return False
    return not method.startswith("create_") or any(words in str(error) for words in NEVER_SENT)


class PatientClient(MlflowClient):
    """MLflow's client, each of whose calls waits for a store that is away (a server restarting,
    its database failing over) up to `patience` seconds: tried again with backoff, one line when
    the outage starts and one when it ends; still away then, `StoreAway` (one line, exit 69).

    For what must see the store: the sweep's lock and parent run, registration, aliases, the
    promotion gate. A client without patience (0) fails as MLflow's does. Artifact calls are
    not waited for: they go to the artifact store, whose errors are not the tracking store's."""

    def __init__(self, tracking_uri: str, patience: float = 0.0) -> None:
        self.patience = patience  # first: MLflow's own set-up may call a method
        super().__init__(tracking_uri)

    def __getattribute__(self, name: str) -> Any:
        found = super().__getattribute__(name)
        if name.startswith("_") or "artifact" in name or not callable(found):
            return found
        patience = super().__getattribute__("patience")
        if patience <= 0:
            return found
        return functools.partial(wait_for_store, found, name, patience)


class _Waiting(threading.local):
    inside = False  # a patient call runs on this thread: the calls it makes wait through it
    # Since when the store has been away, as a call that could not be made again left it (a
    # create cut off mid-outage): the next call on this thread waits on within the same
    # patience and says when the store is back.
    away: float | None = None


WAITING = _Waiting()


@contextmanager
def impatient() -> Iterator[None]:
    """The block's store calls on this thread fail as MLflow's do, without waiting (a heartbeat
    that will beat again, a writer with retries of its own)."""
    before = WAITING.inside
    WAITING.inside = True
    try:
        yield
    finally:
        WAITING.inside = before


def wait_for_store(
    method: Callable[..., Any], name: str, patience: float, *args: Any, **kwargs: Any
) -> Any:
    """`method(*args, **kwargs)`, made again while the store is away (`may_wait_for`), for up to
    `patience` seconds from the first failure (an earlier call's on this thread, which could not
    be made again, included)."""
    if WAITING.inside:
        return method(*args, **kwargs)
    away, WAITING.away = WAITING.away, None
    delay = 1.0
    with impatient():
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not may_wait_for(name, exc):
                    if away is not None and unreachable(exc):
                        WAITING.away = away  # still away: the caller's next call waits on
                    elif away is not None:  # the store answered
                        say_back(away)
                    raise
                now = time.monotonic()
                if away is None:
                    away = now
                    log.warning(
                        "tracking store unreachable (%s: %s); waiting up to %.0f s for it",
                        name,
                        first_line(exc),
                        patience,
                    )
                if now - away >= patience:
                    raise StoreAway(
                        f"tracking store unreachable for {now - away:.0f} s "
                        f"(PIPELINE_TRACKING_OUTAGE_TIMEOUT {patience:.0f} s): {name} failed: "
                        f"{first_line(exc)}"
                    ) from None
                time.sleep(min(delay, patience - (now - away)))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if away is not None:
                say_back(away)
            return result


def say_back(away: float) -> None:
    log.warning("tracking store back after %.0f s", time.monotonic() - away)


def open_client_waiting(tracking_uri: str, timeout: float) -> Client:
    """`open_client`, waiting up to `timeout` seconds for a store that does not answer (see
    `StoreUnreachable`); still unreachable then, it says so (`StoreAway`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_client(tracking_uri)
        except StoreUnreachable as exc:
            if time.monotonic() >= deadline:
                raise StoreAway(f"{exc}; waited {timeout:.0f} s for it") from None
            log.info("tracking store unreachable; waiting up to %.0f s for it", timeout)
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.0)))


class OpenSqlite:
    """The SQLite connections MLflow's engines hold open in this process, each from its
    opening to its closing (SQLAlchemy's events; MLflow builds the engines, so the events are
    heard on every engine): each is opened in WAL mode, and all can be closed at once by a
    command that leaves without the interpreter's teardown (see `close_stores`)."""

    def __init__(self) -> None:
        self.connections: set[sqlite3.Connection] = set()

    def install(self) -> None:
        """Hear every engine's connections open and close, once per process."""
        if not event.contains(Engine, "connect", self.opened):
            event.listen(Engine, "connect", self.opened)
            event.listen(Pool, "close", self.closed)
            event.listen(Pool, "close_detached", self.closed_detached)

    def opened(self, connection: Any, record: Any) -> None:
        """WAL mode with normal syncing: a commit appends to the log instead of syncing the
        database file (MLflow commits several times per trial; this made them ~N times
        cheaper), readers (the UI) do not block the writer, and a crashed process loses nothing
        committed (a power cut may lose the last commits, never consistency)."""
        if isinstance(connection, sqlite3.Connection):
            self.connections.add(connection)
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    def closed(self, connection: Any, record: Any) -> None:
        self.connections.discard(connection)

    def closed_detached(self, connection: Any) -> None:
        self.connections.discard(connection)

    def close_all(self) -> None:
        """Close them: the last one to close folds the write-ahead log into the database file
        and removes it."""
        for connection in list(self.connections):
            connection.close()
        self.connections.clear()


OPEN_SQLITE = OpenSqlite()  # one per process, as the engines' events are


def close_stores() -> None:
    """Close this process's SQLite connections, as the interpreter's own teardown would (for a
    process about to leave without it)."""
    OPEN_SQLITE.close_all()


def exit_now(status: int) -> NoReturn:
    """End the process with `status` now, from any thread, skipping the interpreter's teardown:
    logs and output flushed and the SQLite stores closed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    close_stores()
    os._exit(status)


def make_local_store(tracking_uri: str) -> Path | None:
    """Create the folder of a SQLite store (MLflow creates the database itself); its file."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return database


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` for the block (model logging and loading use
    it; everything else passes the URI to a client explicitly)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


# The kind MLflow's UI files this experiment under, "Machine learning" (its JS bundle's
# CUSTOM_MODEL_DEVELOPMENT), not GenAI. MLflow 3.17's UI ignores it and follows a preference its
# page keeps in the browser: see `ui_page`, which sets that.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(
    client: Client, name: str, artifact_root: Path | None, description: str = ""
) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`, if given; with
    `description` as its note) when new. Either way it opens on the runs table in the UI."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise PipelineError(
                f"MLflow experiment '{name}' is deleted; restore it or pick another name"
            )
        for key, value in EXPERIMENT_KIND.items():
            if key not in found.tags:  # made before we set it, or by someone else
                client.set_experiment_tag(found.experiment_id, key, value)
        return str(found.experiment_id)
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    # The note is the description MLflow's UI shows, of a run or an experiment.
    marks = {**EXPERIMENT_KIND, MLFLOW_RUN_NOTE: description} if description else EXPERIMENT_KIND
    return str(client.create_experiment(name, artifact_location=location, tags=marks))


def find_experiment(client: Client, name: str) -> str | None:
    """The id of the experiment named `name`, None if there is none."""
    found = client.get_experiment_by_name(name)
    return None if found is None else str(found.experiment_id)


def experiment_id(client: Client, name: str) -> str:
    """The id of an existing experiment; a missing one is an error saying to run a sweep."""
    found = client.get_experiment_by_name(name)
    if found is None:
        raise PipelineError(f"no MLflow experiment '{name}'; run a sweep first")
    return str(found.experiment_id)
