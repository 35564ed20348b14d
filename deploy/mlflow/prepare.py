"""Before the tracking server starts: its database schema (tracking, registry and basic auth)
made or migrated by one server at a time (and, with MLFLOW_ADMIN_PASSWORD_ROTATE=1, the admin's
password set to the one the environment holds), and the Host headers it answers.

    python prepare.py schema      create or migrate the schema under a PostgreSQL advisory lock
    python prepare.py hosts EXTRA MLflow's default allowed hosts, plus EXTRA (comma-separated)

Two replicas starting on an empty database would both create MLflow's tables and one would
crash; under the lock the second finds them made. MLflow's `--allowed-hosts` replaces its
defaults (localhost and private networks), so the extra names are added to them instead.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text

if TYPE_CHECKING:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore

SCHEMA_LOCK = 5_177_011  # any constant: the advisory lock every replica of this server takes


def prepare_schema() -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    backend = os.environ["MLFLOW_BACKEND_STORE_URI"]
    auth = os.environ.get("MLFLOW_AUTH_DATABASE_URI") or backend
    artifacts = os.environ["MLFLOW_ARTIFACTS_DESTINATION"]
    engine = create_engine(backend)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        if postgres:  # released with the connection, also if this process dies
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
        TrackingStore(backend, artifacts)
        RegistryStore(backend)
        users = AuthStore()
        users.init_db(auth)
        if os.environ.get("MLFLOW_ADMIN_PASSWORD_ROTATE") == "1":
            rotate_admin(users)
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})


def rotate_admin(users: AuthStore) -> None:
    """Give the admin the password the environment holds now: MLflow sets it only when it
    creates the admin, on the first start, so a changed secret would otherwise not take."""
    name = os.environ["MLFLOW_AUTH_ADMIN_USERNAME"]
    password = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if not users.has_user(name, use_primary=True):
        users.create_user(name, password, is_admin=True)
    elif not users.authenticate_user(name, password, use_primary=True):
        users.update_user(name, password=password, is_admin=True)
        print(f"rotated the password of MLflow admin '{name}'", file=sys.stderr)


def allowed_hosts(extra: str) -> str:
    from mlflow.server.security_utils import get_default_allowed_hosts

    hosts = [*get_default_allowed_hosts(), *(h.strip() for h in extra.split(",") if h.strip())]
    return ",".join(dict.fromkeys(hosts))


if __name__ == "__main__":
    if sys.argv[1:2] == ["schema"]:
        prepare_schema()
    elif sys.argv[1:2] == ["hosts"]:
        print(allowed_hosts(sys.argv[2] if len(sys.argv) > 2 else ""))
    else:
        sys.exit(__doc__)
