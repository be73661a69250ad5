"""The base of every params model: frozen, strict and closed pydantic, refused with errors a person can act on.

Below `params.py` and the ControlNet kinds' own params (pipelines/control), which both build on it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import Self  # in typing from Python 3.11; pydantic requires typing_extensions

MAX_PROMPT_LENGTH = 2000


class ParamsError(ValueError):
    """A refused params change: one (param, message) per problem; the param is None for a rule across several."""

    def __init__(self, errors: list[tuple[str | None, str]]) -> None:
        super().__init__("; ".join(message for _, message in errors))
        self.errors = errors

    def as_list(self) -> list[dict[str, str | None]]:
        return [{"param": param, "message": message} for param, message in self.errors]


def _whole_number(value: Any) -> Any:
    """3.0 is 3 (JSON from some clients writes every number as a float); 3.5 and true stay wrong."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class Params(BaseModel):
    """Base of every params model: frozen, strict, closed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @classmethod
    def validated(cls, values: dict[str, Any]) -> Self:
        """A params object from `values`, or ParamsError with every problem in words."""
        if not isinstance(values, dict):
            raise ParamsError([(None, "params must be a JSON object of name: value")])
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ParamsError([_describe(cls, detail) for detail in error.errors()]) from None

    def replace(self, changes: dict[str, Any]) -> Self:
        """A copy with `changes` applied, validated as a whole; ParamsError changes nothing."""
        if not isinstance(changes, dict):
            raise ParamsError([(None, "params must be a JSON object of name: value")])
        return self.validated({**self.model_dump(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def field_bounds(model: type[BaseModel], name: str) -> tuple[Any, Any, Any]:
    field = model.model_fields[name]
    found = {"ge": None, "le": None, "multiple_of": None}
    for constraint in field.metadata:
        for key in found:
            if getattr(constraint, key, None) is not None:
                found[key] = getattr(constraint, key)
    return found["ge"], found["le"], found["multiple_of"]


def _describe(model: type[BaseModel], detail: ErrorDetails) -> tuple[str | None, str]:
    """One pydantic error as (param, words a person can act on)."""
    kind, location, value = detail["type"], detail["loc"], detail["input"]
    name = str(location[0]) if location else None
    if name is None or name not in model.model_fields:
        if kind == "extra_forbidden":
            return name, f"unknown parameter {name}; known: {', '.join(model.model_fields)}"
        return None, detail["msg"].removeprefix("Value error, ")
    lower, upper, multiple = field_bounds(model, name)
    annotation = model.model_fields[name].annotation
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return name, f"{name} must be between {lower} and {upper}, got {value}"
    if kind == "multiple_of":
        return name, f"{name} must be a multiple of {multiple}, got {value}"
    if kind == "string_too_long":
        return name, f"{name} is {len(value)} characters; the limit is {MAX_PROMPT_LENGTH}"
    if kind == "literal_error":
        choices = ", ".join(getattr(annotation, "__args__", ()))
        return name, f"{name} must be one of {choices}; got {value!r}"
    if kind in ("finite_number",):
        return name, f"{name} must be finite, got {value}"
    if annotation is str and isinstance(value, str):  # a lone surrogate ("\ud800") is a str but not text
        return name, f"{name} is not valid Unicode text"
    if annotation is str:
        return name, f"{name} must be a string, got {_json_type(value)}"
    if annotation is int and isinstance(value, float):
        return name, f"{name} must be a whole number, got {value}"
    return name, f"{name} must be a number between {lower} and {upper}, got {_json_type(value)}"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", type(None): "null", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
