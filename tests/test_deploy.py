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
    """Every string in a YAML document; a list of words (a container's command) joined, a list
    of shell lines (setup commands) line by line."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        words = node and all(isinstance(item, str) and not re.search(r"\s", item) for item in node)
        if words:
            yield shlex.join(node)
        else:
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
        joined = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", joined)  # ${VAR:-default}: the default
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
    assert dockerfile.index("TORCH_SPEC") < dockerfile.index('pip install ".[cluster]"')
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / copied).exists(), f"Dockerfile copies missing {copied}"


def test_env_example_lists_every_setting_the_cli_reads() -> None:
    files = (REPO / "pipeline" / "cli").glob("*.py")  # environment.py among them
    source = "".join(path.read_text() for path in files)
    read = set(re.findall(r'environ\.get\("([A-Z_]+)"', source))
    read |= set(re.findall(r'envvar="([A-Z_]+)"', source))
    read -= {"PATH"}  # handed on to subprocesses, not a setting
    listed = set(re.findall(r"^([A-Z_]+)=", (DEPLOY / "env.example").read_text(), re.M))
    assert read, "no settings found in pipeline/cli/"
    assert read <= listed, f"missing from deploy/env.example: {sorted(read - listed)}"
    assert {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME"} <= listed


SECRET_SETTING = re.compile(
    r"""^\s*(?:-\s*|export\s+)?["']?([A-Z][A-Z0-9_]*(?:PASSWORD|SECRET|TOKEN)[A-Z0-9_]*)["']?"""
    r"""\s*[:=]\s*(.*)$"""
)
NOT_SECRETS = ("_PATH", "_ROTATE", "_MODE", "_FILE")  # settings about a secret, not one


def committed_secrets(text: str) -> list[str]:
    """Settings of a password, secret or token given a literal value, in any of the forms the
    deploy files use: KEY=value (env files, shell, compose lists) and KEY: value (YAML)."""
    found = []
    for line in text.splitlines():
        match = SECRET_SETTING.match(line)
        if match is None or match.group(1).endswith(NOT_SECRETS):
            continue
        value = match.group(2).split(" #")[0].strip().strip("'\"")
        if value and not value.startswith(("$", "{{", "<")):
            found.append(match.group(1))
    return found


def test_the_secret_scan_sees_every_form() -> None:
    for line in (
        "POSTGRES_PASSWORD=hunter2",
        "POSTGRES_PASSWORD: hunter2",
        '  - "MLFLOW_ADMIN_PASSWORD=hunter2"',
        "export RAY_AUTH_TOKEN=abc",
        '"MINIO_ROOT_PASSWORD": "hunter2"',
    ):
        assert committed_secrets(line), line
    for line in (
        "POSTGRES_PASSWORD=",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}",
        "RAY_AUTH_TOKEN_PATH=/var/run/token",
        "MLFLOW_ADMIN_PASSWORD_ROTATE=0",
    ):
        assert not committed_secrets(line), line


def test_no_secret_is_committed_in_deploy() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            found = committed_secrets(path.read_text())
            assert not found, f"{path.relative_to(REPO)}: a value for {found}"


# --- schemas: Kubernetes' own objects and KubeRay's resources, checked strictly -----------------

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and the newest the manifests target
KUBERAY_VERSIONS = ("1.6.1", "1.7.0")
SCHEMAS = REPO / "tests" / "schemas"


def manifests(api_group: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(file, document) of every Kubernetes object in deploy/ (not compose or `ray up` files);
    with `api_group`, only that group's, else only Kubernetes' own."""
    found = []
    for path, document in documents():
        if not isinstance(document, dict) or "apiVersion" not in document or "kind" not in document:
            continue
        group = document["apiVersion"].split("/")[0] if "/" in document["apiVersion"] else ""
        if (group == api_group) if api_group else group != "ray.io":
            found.append((str(path.relative_to(REPO)), document))
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_pass_the_api_schemas_strictly(version: str) -> None:
    import kubernetes_validate

    checked = manifests(None)
    kinds = {document["kind"] for _, document in checked}
    assert {"CronJob", "Deployment", "StatefulSet", "Service"} <= kinds
    for where, document in checked:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {document['kind']} fails Kubernetes {version}: {error}")


def strict(schema: Any) -> Any:
    """A CRD schema in which an object accepts only the fields it declares (the API server would
    drop the others without a word)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_kuberay_resources_pass_their_crds_strictly(version: str) -> None:
    import gzip
    import json

    import jsonschema

    checked = manifests("ray.io")
    assert {d["kind"] for _, d in checked} == {"RayCluster", "RayJob", "RayCronJob"}
    for where, document in checked:
        path = SCHEMAS / f"kuberay-{version}" / f"{document['kind']}.json.gz"
        schema = strict(json.loads(gzip.decompress(path.read_bytes())))
        body = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
        assert not errors, f"{where} fails KubeRay {version}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )


def test_the_token_secret_is_named_as_kuberay_creates_it() -> None:
    """KubeRay (>= 1.5.1, authOptions.mode token) keeps a cluster's token in a Secret named
    after the cluster, under the key auth_token; what the files say and read must match."""
    [(_, cluster)] = [item for item in manifests("ray.io") if item[1]["kind"] == "RayCluster"]
    name = cluster["metadata"]["name"]
    raycluster = (DEPLOY / "kuberay" / "raycluster.yaml").read_text()
    assert f"kubectl get secret {name} -o jsonpath='{{.data.auth_token}}'" in raycluster
    [(_, cronjob)] = [item for item in manifests(None) if item[1]["kind"] == "CronJob"]
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    [token] = [e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": name, "key": "auth_token"}


def test_ray_up_config_passes_rays_own_validation_and_sets_every_node_up() -> None:
    """`ray up`'s config through Ray's own schema and defaults; every node type, workers
    included, runs the whole setup (a node type's own worker_setup_commands would replace the
    global ones), and nothing calls a program the setup does not install."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text()))
    validate_config(config)
    setup = config["setup_commands"]
    assert any("make install-cluster" in line for line in setup), "Ray, dashboard and boto3"
    assert any("~/.ray/auth_token" in line for line in setup)
    assert any("RAY_AUTH_MODE=token" in line for line in setup)
    for name, node_type in config["available_node_types"].items():
        own = node_type.get("worker_setup_commands")
        assert own is None, f"{name}: worker_setup_commands would replace setup_commands"
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: reads the token"
    assert config["head_setup_commands"][: len(setup)] == setup
    assert config["worker_setup_commands"][: len(setup)] == setup
    lists = ("initialization_commands", "setup_commands", "head_start_ray_commands")
    programs = {
        words[0]
        for key in (*lists, "worker_start_ray_commands")
        for line in config[key]
        for words in commands(line)
    }
    assert "aws" not in programs, "the aws CLI is installed nowhere"
    assert "boto3>=" in " ".join(extras()["cluster"])


def extras() -> dict[str, list[str]]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


def test_the_images_install_the_projects_extras() -> None:
    """The images' package sets are the extras the tests install (test_cluster.py builds the
    node image's, test_tracking_server.py the server image's)."""
    node = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install ".[cluster]"' in node
    assert "wget" in node, "KubeRay's exec probes (KubeRay < 1.6) call wget"
    server = (DEPLOY / "mlflow" / "Dockerfile").read_text()
    assert "python deploy/requirements.py server > requirements.txt" in server
    assert "pip install -r requirements.txt" in server
    assert any(r.startswith("ray[default]") for r in extras()["cluster"])
    assert any(r.startswith("mlflow[auth]") for r in extras()["server"])
    assert any(r.startswith("psycopg[binary]") for r in extras()["server"])
