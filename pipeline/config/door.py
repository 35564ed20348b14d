"""The door for user code: a `module:function` reference imported from the space's code paths,
and the contract of the two functions that come through it.

A builder is `build(spec, **hyperparameters) -> nn.Module`; its keyword arguments are the
parameters of the space that are not training hyperparameters, each checked against the domain
its annotation declares (`Annotated[int, Hyperparameter(...)]`, a `Literal`, or a plain `int`,
`float`, `bool` or `str`). A loader is `load(**args)`. Our own networks are builders of the same
contract (`BUILT_IN_BUILDERS`), named by their short family name.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pipeline.config.hyperparameters import Hyperparameter
from pipeline.config.records import did_you_mean
from pipeline.errors import PipelineError

BUILT_IN_BUILDERS = {"mlp": "pipeline.core.networks:mlp", "cnn": "pipeline.core.networks:cnn"}


def add_to_path(paths: Sequence[str]) -> None:
    """Put the space's code folders first on the import path (once each)."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def import_callable(reference: str, paths: Sequence[str], role: str) -> Callable[..., Any]:
    """The function `package.module:function`, imported with `paths` first on the import path;
    every failure is one line naming the module and the folders searched."""
    module_name, _, attribute = reference.partition(":")
    add_to_path(paths)
    searched = ", ".join(paths) if paths else "no code.paths (installed packages only)"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
            raise PipelineError(  # the module is there; something it imports is not
                f"{role} {reference}: importing '{module_name}' failed: ModuleNotFoundError: {exc}"
            ) from None
        raise PipelineError(
            f"{role} {reference}: cannot import module '{module_name}' ({exc}); searched {searched}"
        ) from None
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise PipelineError(
            f"{role} {reference}: importing '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, attribute, None)
    if function is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise PipelineError(
            f"{role} {reference}: module '{module_name}' ({module.__file__}) has no "
            f"'{attribute}'{did_you_mean(attribute, public)}"
        )
    if not callable(function):
        raise PipelineError(f"{role} {reference}: '{attribute}' is not a function")
    return typing.cast(Callable[..., Any], function)


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a builder or loader: whether it needs a value, and its domain."""

    name: str
    required: bool
    domain: Hyperparameter | None


@dataclass(frozen=True)
class Signature:
    """The keyword arguments a builder or loader takes; `open_ended` when it takes **kwargs."""

    reference: str
    arguments: dict[str, Argument]
    open_ended: bool

    def check_given(self, given: Sequence[str], where: str, role: str) -> None:
        """Every required argument given; no name it does not take."""
        for name in given:
            if name not in self.arguments and not self.open_ended:
                raise PipelineError(
                    f"{where}.{name}: not an argument of {role} {self.reference}"
                    f"{did_you_mean(name, list(self.arguments))}"
                )
        for argument in self.arguments.values():
            if argument.required and argument.name not in given:
                raise PipelineError(
                    f"{where}: {role} {self.reference} needs '{argument.name}' (it has no "
                    f"default); add {where}.{argument.name}"
                )


def domain_of(annotation: Any) -> Hyperparameter | None:
    """The domain an annotation declares: its Hyperparameter, a Literal's values, a type."""
    if get_origin(annotation) is typing.Annotated:
        declared = [m for m in annotation.__metadata__ if isinstance(m, Hyperparameter)]
        return declared[0] if declared else domain_of(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return Hyperparameter(kind=object, allowed=get_args(annotation))
    if annotation in (int, float, bool, str):
        return Hyperparameter(kind=annotation)
    return None


def signature_of(
    function: Callable[..., Any], reference: str, role: str, *, takes_spec: bool
) -> Signature:
    """The keyword arguments of a builder (`takes_spec`: its first parameter is the model spec)
    or of a loader; a signature that cannot take them so is refused."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{role} {reference}: cannot read its signature: {exc}") from None
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # unresolvable annotations only lose their domain checks
        hints = {}
    usage = "build(spec, **hyperparameters)" if takes_spec else "load(**args)"
    if takes_spec:
        if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise PipelineError(
                f"{role} {reference}: must take the model spec as its first positional "
                f"parameter, as in {usage}"
            )
        parameters = parameters[1:]
    arguments: dict[str, Argument] = {}
    open_ended = False
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise PipelineError(
                f"{role} {reference}: '{parameter.name}' is positional-only; every parameter "
                f"must be passable by name, as in {usage}"
            )
        else:
            required = parameter.default is inspect.Parameter.empty
            domain = domain_of(hints.get(parameter.name, parameter.annotation))
            arguments[parameter.name] = Argument(parameter.name, required, domain)
    return Signature(reference, arguments, open_ended)


def code_fingerprint(paths: Sequence[str]) -> str:
    """Short hash of every Python file under the code folders (names and contents): tells
    apart versions trained by different code."""
    digest = hashlib.sha256()
    for root in paths:
        for file in sorted(Path(root).rglob("*.py")):
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def shipped_modules(paths: Sequence[str]) -> Iterator[Path]:
    """The importable things in the code folders, as Ray ships them to every worker: each
    package folder and each top-level .py module."""
    for root in paths:
        if not Path(root).is_dir():
            raise PipelineError(f"code.paths: {root} is not a folder on this machine")
        for entry in sorted(Path(root).iterdir()):
            package = entry.is_dir() and any(entry.rglob("*.py"))  # namespace packages too
            module = entry.suffix == ".py"
            if (package or module) and Path(entry.stem).name.isidentifier():
                yield entry
