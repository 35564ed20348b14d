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
    "pipeline.cli.display": set(),
    "pipeline.cli.environment": set(),
    "pipeline.tracking.server": set(),  # mlflow-server: MLflow only in the process it becomes
    "pipeline.workflows.schedule": set(),  # schedule, unschedule
    "pipeline.workflows.serving": {"mlflow"},  # promote, rollback, predict, export, serve, ui
    "pipeline.workflows.nights": {"mlflow"},  # history
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


ABSENT = (1, "no registered model 'absent' (registered: none yet")
REGISTRY_COMMANDS = [
    (["promote", "--model", "absent"], ABSENT),
    (["rollback", "--model", "absent"], ABSENT),
    (["predict", "--model", "absent", "--input", "rows.csv", "--output", "out.csv"], ABSENT),
    (["export-test-rows", "--model", "absent", "--output", "rows.csv"], ABSENT),
    (["serve", "--model", "absent"], ABSENT),
    (["history", "--model", "absent"], (0, "no nights of absent yet")),
]
# Runs each command in turn in one interpreter (the CLI as `python -m pipeline` runs it) and
# reports, after each, its exit status and the heavy packages loaded so far.
IN_TURN = f"""
import contextlib, io, json, sys
from pipeline.cli import app
for args in json.loads(sys.argv[1]):
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            app(args, prog_name="python -m pipeline")
        except SystemExit as exit:
            code = exit.code or 0
    loaded = [m for m in {HEAVY!r} if m in sys.modules]
    print(json.dumps([code, said.getvalue(), loaded]), flush=True)
"""


def test_registry_commands_run_without_ray_or_torch(tmp_path: Path) -> None:
    """On a real (empty) store, each command gets as far as the registry and loads no Ray; torch
    only once it loads a model (see test_registry.py for commands on real models)."""
    arguments = json.dumps([args for args, _ in REGISTRY_COMMANDS])
    done = subprocess.run(
        [sys.executable, "-c", IN_TURN, arguments],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == len(REGISTRY_COMMANDS)
    for (args, (code, message)), (status, said, loaded) in zip(
        REGISTRY_COMMANDS, reports, strict=True
    ):
        assert status == code, f"{args}: {said}"
        assert message in " ".join(said.split()), f"{args}: {said}"
        assert set(loaded) == {"mlflow"}, f"{args} loaded {loaded}"
