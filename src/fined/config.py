"""Configuration plumbing shared by every layer: strict pydantic models, one error format,
YAML reading, and the one way settings are layered.

Every config section is a ``StrictModel`` (an unknown key is an error naming it, never
ignored). Settings are resolved in one order everywhere (RecBole's precedence chain):
the model's own defaults (the pydantic fields) < a user's file < ``--quick`` overrides <
``--set key=value`` on the command line; ``resolve`` applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from fined.errors import FinedError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem, each naming the key path, e.g. ``periods.by: Input should be ...``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == NESTED:  # a section validated by a model chosen at run time
            parts += [f"{loc}.{path}: {msg}" for path, msg in e["ctx"]["errors"]]
        else:
            message = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc or '(top level)'}: {message}")
    return f"{where}: " + "; ".join(parts)


NESTED = "nested"


def key_error(path: str, message: str) -> PydanticCustomError:
    """An error about one key inside a section (raised from the section's validator), shown
    with its whole path: ``strategies`` + ``1.label``."""
    return PydanticCustomError(
        NESTED, "{text}", {"text": f"{path}: {message}", "errors": [(path, message)]}
    )


def nested_error(err: ValidationError, *path: str | int) -> PydanticCustomError:
    """The errors of a section validated inside a validator (by a model picked from its
    contents: a strategy's kind, a model's name), as one error whose key paths continue the
    section's own (``strategies`` + ``1.kd_weight``)."""
    prefix = "".join(f"{p}." for p in path)
    errors = [
        (prefix + ".".join(str(x) for x in e["loc"]), e["msg"])
        if e["loc"]
        else (prefix.rstrip("."), e["msg"])
        for e in err.errors()
    ]
    text = "; ".join(f"{p}: {m}" for p, m in errors)
    return PydanticCustomError(NESTED, "{text}", {"text": text, "errors": errors})


def parse_model(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` into ``model`` or raise a FinedError naming the bad keys."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise FinedError(format_validation_error(err, where)) from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing file or a syntax error ends in a FinedError."""
    path = Path(path)
    if not path.is_file():
        raise FinedError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise FinedError(f"{path}: invalid YAML{at}: {getattr(err, 'problem', err)}") from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, recursing into mappings (lists are replaced whole)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` as ``{"train": {"lr": 0.1}}`` (each key a path of names)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        for part in reversed(key.split(".")):
            value = {part: value}
        out = merge(out, value)
    return out


def resolve(model: type[M], *layers: dict[str, Any] | None, where: str) -> M:
    """``model``'s defaults, then each layer of settings on top (a file, ``--quick``,
    ``--set``), validated once; an error names the key."""
    doc: dict[str, Any] = {}
    for layer in layers:
        doc = merge(doc, layer or {})
    return parse_model(model, doc, where)
