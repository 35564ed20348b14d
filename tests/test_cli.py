"""What each command loads: the commands that need no Ray never import it, and `--help` loads
neither torch nor MLflow. Checked in fresh interpreters, on the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HEAVY, cli_env, run_reporting

# Each command's module, lightest first: a module is checked before any heavier one is loaded.
COMMAND_MODULES = {
    "pipeline.cli": set(),  # --help, and every command's options
    "pipeline.display": set(),
    "pipeline.environment": set(),
    "pipeline.tracking.server": set(),  # mlflow-server: MLflow only in the process it becomes
    "pipeline.workflows.serving": {"mlflow"},  # promote, rollback, predict, export, serve, ui
}


def test_each_command_module_imports_without_ray() -> None:
    script = "import importlib, json, sys\nloaded = {}\n"
    for module in COMMAND_MODULES:
        script += f"importlib.import_module({module!r})\n"
        script += f"loaded[{module!r}] = [m for m in {HEAVY!r} if m in sys.modules]\n"
    script += "print(json.dumps(loaded))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert {module: set(found) for module, found in loaded.items()} == COMMAND_MODULES


@pytest.mark.parametrize(
    "args", [["--help"], ["tune", "--help"], ["promote", "--help"], ["mlflow-server", "--help"]]
)
def test_help_loads_no_heavy_package(tmp_path: Path, args: list[str]) -> None:
    loaded, done = run_reporting(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert loaded == set()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["promote", "--model", "absent"],
        ["rollback", "--model", "absent"],
        ["predict", "--model", "absent", "--input", "rows.csv", "--output", "out.csv"],
        ["export-test-rows", "--model", "absent", "--output", "rows.csv"],
        ["serve", "--model", "absent"],
    ],
)
def test_registry_commands_run_without_ray_or_torch(tmp_path: Path, args: list[str]) -> None:
    """On a real (empty) store: the command gets as far as the registry, and loads no Ray; torch
    only once it loads a model (see test_registry.py for commands on real models)."""
    loaded, done = run_reporting(tmp_path, *args)
    assert done.returncode == 1
    assert "no registered model 'absent' (registered: none yet" in done.stderr
    assert loaded == {"mlflow"}
