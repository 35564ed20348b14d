"""Checks that a store can be used, before anything is started or written: a tracking store
(an MLflow server, a database, a SQLite file) or a tracking server's backend database. No MLflow
here: `mlflow-server` checks its database before it becomes MLflow."""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import PipelineError, StoreUnreachable

STORE_TIMEOUT_S = 8.0  # an unreachable tracking store fails the command within this


def check_tracking_store(uri: str, timeout_s: float = STORE_TIMEOUT_S) -> None:
    """Fail fast, in one line, when the tracking store at `uri` cannot be used, before anything
    is started or written: an http(s) server must answer as MLflow does, a database must accept
    a connection within `timeout_s` (the password masked in the message), a SQLite file must be
    writable."""
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout_s)
    elif uri.startswith("sqlite:"):
        check_sqlite(uri)
    elif "://" in uri and not uri.startswith("file:"):
        check_database(uri, timeout_s)
    else:
        raise PipelineError(
            f"tracking URI {uri!r} is a folder; MLflow stores runs in a database "
            "(sqlite:///path/mlflow.db, postgresql://...) or behind a server (http://...)"
        )


def check_server(uri: str, timeout_s: float) -> None:
    """An http(s) tracking server answers /health as MLflow does ("OK"); retried until
    `timeout_s` so that a server that is restarting gets a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(
                f"{uri.rstrip('/')}/health", timeout=min(4.0, remaining)
            ) as answer:
                body = answer.read(64)
            if body.strip() == b"OK":
                return
            raise PipelineError(
                f"{uri} is not an MLflow tracking server: its /health answered "
                f"{body[:20]!r}, not OK"
            )
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):  # a proxy that authenticates; MLflow's client logs in
                return
            if exc.code < 500:
                raise PipelineError(
                    f"{uri} is not an MLflow tracking server: /health answered HTTP {exc.code}"
                ) from None
            problem = f"HTTP {exc.code}"
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            problem = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        if deadline - time.monotonic() < 1.0:
            raise StoreUnreachable(
                f"MLflow tracking server {uri} cannot be reached ({problem}); start it "
                "(make mlflow-server) or unset MLFLOW_TRACKING_URI to use the local store"
            )
        time.sleep(1.0)


def check_sqlite(uri: str) -> None:
    """A SQLite store's file (or the folder it will be made in) can be written; nothing is
    created here."""
    database = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not database.name:
        raise PipelineError(f"tracking URI {uri!r}: expected sqlite:///path/to/mlflow.db")
    existing = database if database.exists() else database.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if existing != database and not existing.is_dir():
        raise PipelineError(
            f"tracking store {uri}: cannot create {database.parent}: {existing} is a file"
        )
    if not os.access(existing, os.W_OK):
        raise PipelineError(f"tracking store {uri}: {existing} is not writable")


def store_exists(uri: str) -> bool:
    """False only for a SQLite store whose file is not made yet (it holds nothing)."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def connect_arguments(drivername: str, timeout_s: float) -> dict[str, int]:
    """The driver's own connect deadline (libpq and MySQL count whole seconds, at least 2)."""
    if drivername.split("+")[0] in ("postgresql", "mysql", "mariadb"):
        return {"connect_timeout": max(2, math.ceil(timeout_s))}
    return {}


def check_database(uri: str, timeout_s: float, role: str = "tracking store") -> None:
    """A database store (`role`, for messages) accepts a connection within `timeout_s`; errors
    are one line, the password masked."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(uri)
    except ArgumentError:
        raise PipelineError(f"{role}: not a database URL (scheme://user@host/db)") from None
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(
            url, poolclass=NullPool, connect_args=connect_arguments(url.drivername, timeout_s)
        )
    except (NoSuchModuleError, ImportError) as exc:
        raise PipelineError(f"{role} {shown}: no driver for {url.drivername} ({exc})") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreUnreachable(
            f"{role} {shown} cannot be used (within {timeout_s:.0f} s): {reason}"
        ) from None
    finally:
        engine.dispose()
