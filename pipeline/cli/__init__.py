"""Command line: each command parses its options, calls one library function and prints its
result. Torch, MLflow and Ray are imported inside the commands that use them, so `--help` and
the registry commands start fast (and never load Ray)."""

# isort: off
# Registering the commands; `--help` lists them in this order.
from pipeline.cli import tuning, nightly, reports, models, servers
from pipeline.cli.app import app

# isort: on

__all__ = ["app", "models", "nightly", "reports", "servers", "tuning"]
