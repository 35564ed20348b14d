"""deploy/: every YAML parses, and every command a manifest runs is a real command with valid
options: ours (python -m pipeline ...), make targets, `ray start` and `mlflow server`."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from pipeline.cli import app
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
IMAGE_ROOT = "/home/ray/hpo-pipeline/"  # where deploy/Dockerfile puts the repository


def strings(node: Any) -> Iterator[str]:
    """Every string in a YAML document; lists of words (container commands) joined."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        if node and all(isinstance(item, str) for item in node):
            yield shlex.join(node)
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def documents() -> list[tuple[Path, Any]]:
    return [
        (path, document)
        for path in YAML_FILES
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]


def commands(text: str) -> Iterator[list[str]]:
    """The simple commands in a shell line: split on && ; | and newlines, env assignments off."""
    for part in re.split(r"&&|\|\||;|\||\n", text):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        while words and (words[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
            words = words[1:]
        if words:
            yield words


def all_commands() -> list[tuple[str, list[str]]]:
    found = [
        (f"{path.relative_to(REPO)}", words)
        for path, document in documents()
        for text in strings(document)
        for words in commands(text)
    ]
    for script in DEPLOY.rglob("*.sh"):
        joined = script.read_text().replace("\\\n", " ")
        found += [(str(script.relative_to(REPO)), words) for words in commands(joined)]
    for unit in DEPLOY.rglob("*.service"):  # systemd: what ExecStart= runs
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                found += [(str(unit.relative_to(REPO)), words) for words in commands(line[10:])]
    return found


def check_click(command: click.Command, name: str, arguments: list[str], where: str) -> None:
    # Typer bundles its own click: its usage errors are not click's classes, hence by name.
    try:
        command.make_context(name, list(arguments), resilient_parsing=False)
    except Exception as error:
        if type(error).__name__ != "Exit":
            format_message = getattr(error, "format_message", None)
            message = format_message() if format_message else str(error)
            pytest.fail(f"{where}: `{name} {shlex.join(arguments)}`: {message}")


def test_every_yaml_file_parses_into_documents() -> None:
    assert {p.name for p in YAML_FILES} >= {
        "ray-cluster.yaml",
        "raycluster.yaml",
        "rayjob.yaml",
        "compose.yaml",
        "k8s.yaml",
    }
    kinds = {d.get("kind") for _, d in documents() if isinstance(d, dict)}
    assert {"RayCluster", "RayJob", "Deployment", "StatefulSet", "Service"} <= kinds


def pipeline_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for where, words in all_commands():
        for i in range(len(words) - 2):
            interpreter = Path(words[i]).name in ("python", "python3")  # or a venv's, by path
            if interpreter and words[i + 1 : i + 3] == ["-m", "pipeline"]:
                found.append((where, words[i + 3 :]))
    return found


def test_manifests_run_real_pipeline_commands_with_valid_options() -> None:
    invocations = pipeline_invocations()
    places = {where.rsplit("/", 1)[-1] for where, _ in invocations}
    assert {"rayjob.yaml", "raycronjob.yaml", "nightly-cronjob.yaml"} <= places
    assert "hpo-pipeline-nightly.service" in places
    subcommands: dict[str, click.Command] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for where, arguments in invocations:
        name, *rest = arguments
        assert name in subcommands, f"{where}: no command `{name}` in python -m pipeline"
        check_click(subcommands[name], name, rest, where)
        if "--space" in rest:
            space = rest[rest.index("--space") + 1].removeprefix(IMAGE_ROOT)
            assert (REPO / space).is_file(), f"{where}: no search space {space}"


def test_make_targets_and_ray_and_mlflow_commands_exist() -> None:
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    targets = set(re.findall(r"^([a-zA-Z_-]+):", (REPO / "Makefile").read_text(), re.M))
    seen = set()
    for where, words in all_commands():
        if words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert set(named) <= targets, f"{where}: unknown make target in {words}"
            seen.add("make")
        elif words[:2] == ["ray", "start"]:
            check_click(ray_cli.commands["start"], "ray start", words[2:], where)
            seen.add("ray start")
        elif words[:2] == ["mlflow", "server"]:
            check_click(mlflow_cli.commands["server"], "mlflow server", words[2:], where)
            seen.add("mlflow server")
        elif words[:3] == ["ray", "job", "submit"]:
            submit = ray_cli.commands["job"].commands["submit"]  # type: ignore[attr-defined]
            check_click(submit, "ray job submit", words[3:], where)
            seen.add("ray job submit")
    assert seen == {"make", "ray start", "mlflow server", "ray job submit"}


def test_dockerfile_installs_the_pinned_torch_first_and_runs_the_cli() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "pipeline"]' in dockerfile
    assert dockerfile.index("TORCH_SPEC") < dockerfile.index("pip install .")
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / copied).exists(), f"Dockerfile copies missing {copied}"


def test_env_example_lists_every_setting_the_cli_reads() -> None:
    files = [*(REPO / "pipeline" / "cli").glob("*.py"), REPO / "pipeline" / "environment.py"]
    source = "".join(path.read_text() for path in files)
    read = set(re.findall(r'environ\.get\("([A-Z_]+)"', source))
    read |= set(re.findall(r'envvar="([A-Z_]+)"', source))
    read -= {"PATH"}  # handed on to subprocesses, not a setting
    listed = set(re.findall(r"^([A-Z_]+)=", (DEPLOY / "env.example").read_text(), re.M))
    assert read, "no settings found in pipeline/cli/ or environment.py"
    assert read <= listed, f"missing from deploy/env.example: {sorted(read - listed)}"
    assert {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME"} <= listed


def test_no_secret_is_committed_in_deploy() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for line in path.read_text().splitlines():
                match = re.match(r"\s*([A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*)=(\S+)", line)
                assert not match, f"{path.relative_to(REPO)}: a value for {match.group(1)}"
