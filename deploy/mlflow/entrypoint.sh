#!/bin/sh
# The tracking server of the image: PostgreSQL backend, artifacts served from
# MLFLOW_ARTIFACTS_DESTINATION, MLflow's basic authentication. Secrets come from the
# environment, never from a file of the repository. Checks that would fail later fail here,
# with one line each.
set -eu
here=$(dirname "$0")
fail() { echo "mlflow-entrypoint: $*" >&2; exit 2; }
[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ] || fail "set MLFLOW_BACKEND_STORE_URI (postgresql://...)"
[ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ] || fail "set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix)"
[ -n "${MLFLOW_ADMIN_PASSWORD:-}" ] || fail "set MLFLOW_ADMIN_PASSWORD"
[ "${#MLFLOW_ADMIN_PASSWORD}" -ge 12 ] ||
  fail "MLFLOW_ADMIN_PASSWORD has ${#MLFLOW_ADMIN_PASSWORD} characters; MLflow needs at least 12"
[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] || fail "set MLFLOW_FLASK_SERVER_SECRET_KEY"

# The admin user MLflow creates on first start (its own variables; nothing written to a file).
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_ADMIN_USERNAME:-admin}"
export MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD"
export MLFLOW_AUTH_CONFIG_PATH="${TMPDIR:-/tmp}/mlflow-basic-auth-$$.ini"
umask 077
# MLflow reads this file with configparser, where % starts an interpolation: a password
# URL-encoded in the database URI (%40 for @) must be written as %%40.
auth_database=$(printf '%s' "${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}" | sed 's/%/%%/g')
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = ${auth_database}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

# MLflow's server jobs (GenAI scorers, trace rollups, periodic tasks) serve nothing the pipeline
# uses and cost each replica 7 more processes; replicas that all ran the periodic ones would
# duplicate them (MLflow's own note). On only when asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

python "$here/prepare.py" schema
hosts=$(python "$here/prepare.py" hosts "${MLFLOW_SERVER_ALLOWED_HOSTS:-}")
exec mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --serve-artifacts \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host "${MLFLOW_SERVER_HOST:-0.0.0.0}" \
  --port "${MLFLOW_SERVER_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  --allowed-hosts "$hosts"
