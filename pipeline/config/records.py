"""The records a search space is made of: each checks itself when it is built (after Optuna's
distributions), and rejects keys it does not know, naming the closest one."""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

Scalar = bool | int | float | str


def did_you_mean(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Record(BaseModel):
    """Frozen record that rejects unknown keys, naming the closest known one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in known:
                    raise ValueError(
                        f"unknown key '{key}'{did_you_mean(str(key), known)}; "
                        f"allowed: {', '.join(known)}"
                    )
        return data


class FloatParam(Record):
    """A real value drawn from [low, high], uniformly or log-uniformly, optionally on a grid."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        check_bounds(self.low, self.high, self.log, self.step)
        return self


class IntParam(Record):
    """An integer drawn from [low, high] inclusive, uniformly or log-uniformly."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


def check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    """Optuna's rules: low <= high, log needs low > 0, step and log exclusive, step > 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"low and high must be finite, got low={low}, high={high}")
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"log-uniform needs low > 0, got low={low}")
    if step is not None and log:
        raise ValueError("step and log cannot be used together")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")


class ConditionalOption(Record):
    """A choice option with parameters of its own, sampled only when the option is chosen."""

    name: str
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_params(cls, data: Any) -> Any:
        # YAML writes `- {name: momentum, momentum: {...}}`: every key but `name` is a parameter.
        if isinstance(data, dict) and "params" not in data:
            if "name" not in data:
                raise ValueError(f"an option given as a mapping needs a 'name', got {dict(data)}")
            return {"name": data["name"], "params": {k: v for k, v in data.items() if k != "name"}}
        return data


Option = ConditionalOption | Scalar


class ChoiceParam(Record):
    """One of `values`; an option may be a mapping carrying its own conditional parameters."""

    type: Literal["choice"]
    values: list[Option]

    @model_validator(mode="after")
    def _check(self) -> ChoiceParam:
        if not self.values:
            raise ValueError("values must not be empty")
        names = [option_name(v) for v in self.values]
        duplicates = sorted({str(n) for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate values: {', '.join(duplicates)}")
        return self


def option_name(option: Option) -> Scalar:
    """The value an option gives its parameter (its name, for a conditional option)."""
    return option.name if isinstance(option, ConditionalOption) else option


def _param_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
        return kind if kind in ("float", "int", "choice") else None
    if isinstance(raw, BaseModel):
        return str(getattr(raw, "type", "constant"))
    return "constant"


ParamSpec = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[ChoiceParam, Tag("choice")]
    | Annotated[Scalar, Tag("constant")],
    Discriminator(
        _param_kind,
        custom_error_type="invalid_param",
        custom_error_message=(
            "a parameter is a constant or a mapping with type: float, int or choice"
        ),
    ),
]
ConditionalOption.model_rebuild()
