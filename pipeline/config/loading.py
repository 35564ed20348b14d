"""Reading a search-space file: YAML, `--set` overrides, validation; every error names the file
and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.door import import_callable, signature_of
from pipeline.config.experiment import Experiment
from pipeline.config.space import check_builder_args
from pipeline.errors import PipelineError


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override (`key.sub=value`) and validate a search-space file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such search-space file") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: a folder; give a search-space YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of keys at the top level")
    absolute_data_path(raw, path.parent)  # the file's own: relative to the file
    for override in overrides or []:
        apply_override(raw, override, path)
    absolute_data_path(raw, Path.cwd())  # an override's: relative to where the command runs
    resolve_code_paths(raw, path)
    experiment = parse_experiment(raw, path)
    try:
        check_user_code(experiment)
    except (PipelineError, ValueError) as exc:
        raise PipelineError(f"{path}: {exc}") from None
    return experiment


def absolute_data_path(raw: dict[str, Any], base: Path) -> None:
    """A relative data.path made absolute against `base`, so that the recorded experiment, its
    model's promotion and every Ray worker read the same file wherever they run."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((base / data["path"]).resolve())


def resolve_code_paths(raw: dict[str, Any], source: Path) -> None:
    """code.paths made absolute, relative to the space file; each must be a folder."""
    code = raw.get("code")
    if not isinstance(code, dict) or not isinstance(code.get("paths"), list):
        return  # absent, or wrong: validation names it
    paths = code["paths"]
    resolved = []
    for i, entry in enumerate(paths):
        folder = (source.parent / str(entry)).resolve()
        if not folder.is_dir():
            raise PipelineError(f"{source}: code.paths[{i}]: {entry} ({folder}) is not a folder")
        resolved.append(str(folder))
    code["paths"] = resolved


def check_user_code(experiment: Experiment) -> None:
    """Import the builder and the loader (ours or the user's) and check the space against their
    signatures: every parameter that is not a training hyperparameter is a builder argument, in
    its domain; every loader argument is one it takes."""
    paths = experiment.code.paths
    reference = experiment.model.builder_reference
    builder = import_callable(reference, paths, "model.builder")
    check_builder_args(
        experiment.params, signature_of(builder, reference, "builder", takes_spec=True)
    )
    if experiment.data.loader is not None:
        loader = import_callable(experiment.data.loader, paths, "data.loader")
        signature = signature_of(loader, experiment.data.loader, "loader", takes_spec=False)
        signature.check_given(list(experiment.data.args), "data.args", "loader")


def parse_experiment(raw: dict[str, Any], source: str | Path) -> Experiment:
    """Validate an already-read mapping; `source` names it in errors."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {format_error(e)}" for e in exc.errors()]
        raise PipelineError("\n".join(lines)) from None


def format_error(error: Any) -> str:
    """One pydantic error as 'dotted.key: message', dropping pydantic's union-tag noise."""
    loc = [p for p in error["loc"] if p not in ("float", "int", "choice", "constant")]
    loc = [p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "union[")))]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] not in ("value_error", "invalid_param"):
        message = f"{message} (got {error.get('input')!r})"
    return f"{key}: {message}" if key else message


def apply_override(raw: dict[str, Any], override: str, source: Path) -> None:
    """Set a dotted key to a YAML-parsed value, e.g. `budget.num_samples=4`."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise PipelineError(f"--set {override!r}: expected key=value, e.g. budget.num_samples=4")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PipelineError(f"{source}: --set {key}: '{part}' is not a mapping")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(
            f"--set {override!r}: the value is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
