"""Before the tracking server starts: its database schema (tracking, registry and basic auth)
made or migrated by one server at a time, and the Host headers it answers.

    python prepare.py schema      create or migrate the schema under a PostgreSQL advisory lock
    python prepare.py hosts EXTRA MLflow's default allowed hosts, plus EXTRA (comma-separated)

Two replicas starting on an empty database would both create MLflow's tables and one would
crash; under the lock the second finds them made. MLflow's `--allowed-hosts` replaces its
defaults (localhost and private networks), so the extra names are added to them instead.
"""

import os
import sys

from sqlalchemy import create_engine, text

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
        AuthStore().init_db(auth)
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})


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
