"""Configuration plumbing shared by every layer: strict pydantic models, one error format,
YAML reading, and the one way settings are layered.

Every config section is a ``StrictModel`` (an unknown key is an error naming it, never
ignored). Settings are resolved in one order everywhere (RecBole's precedence chain):
the model's own defaults (the pydantic fields) < a user's file < ``--quick`` overrides <
``--set key=value`` on the command line; ``resolve`` applies it.
"""

from __future__ import annotations

import difflib
import types
import typing
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _MODELS[cls.__name__] = cls  # so that an error can suggest this model's keys


def format_validation_error(
    err: ValidationError, where: str, model: type[BaseModel] | None = None
) -> str:
    """One line per problem, each naming the key path, e.g. ``periods.by: Input should be ...``;
    a key that does not exist is given the nearest existing one (``did you mean``)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == NESTED:  # a section validated by a model chosen at run time
            parts += [f"{loc}.{path}: {msg}" for path, msg in e["ctx"]["errors"]]
        else:
            parts.append(f"{loc or '(top level)'}: {describe(e, model)}")
    return f"{where}: " + "; ".join(parts)


def describe(error: Any, model: type[BaseModel] | None) -> str:
    """A pydantic error's message, with the nearest key for a key that does not exist."""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and model is not None and error["loc"]:
        known = _keys_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return message


def _keys_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys of the section at ``path`` inside ``model`` (best effort: [] if unknown)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue  # an item of a list
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = _model_inside(fields[part].annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_inside(arg)
        if found is not None:
            return found
    return None


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
    model = _MODELS.get(err.title)  # the model the error is about (its title names it)
    errors = [
        (prefix + ".".join(str(x) for x in e["loc"]) if e["loc"] else prefix.rstrip("."),
         describe(e, model))
        for e in err.errors()
    ]  # fmt: skip
    text = "; ".join(f"{p}: {m}" for p, m in errors)
    return PydanticCustomError(NESTED, "{text}", {"text": text, "errors": errors})


def parse_model(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` into ``model`` or raise a FinedError naming the bad keys."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise FinedError(format_validation_error(err, where, model)) from None


_MODELS: dict[str, type[BaseModel]] = {}  # StrictModel subclasses by name, as defined


# A config holds hundreds of values; aliases that expand past this are an alias bomb (nine
# levels of ten aliases: 10^9 values, which validating would walk for ever).
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand to more than
    ``MAX_YAML_VALUES`` values, or refer to themselves, before anything is built from it."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node)
        return node


def _expanded_size(root: yaml.Node) -> int:
    """Values in ``root`` with every alias expanded, counted over the node graph (each node
    once, so that an alias bomb is measured without being expanded)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        children = _children(node)
        if closing:
            open_.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_VALUES + 1)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise yaml.YAMLError(
                    f"aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)"
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_:
            raise yaml.YAMLError("an alias refers to the value that holds it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with aliases bounded (``_BoundedLoader``)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing file, a syntax error or an alias bomb ends in a
    FinedError."""
    path = Path(path)
    if not path.is_file():
        raise FinedError(f"{path}: no such file")
    try:
        return safe_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise FinedError(
            f"{path}: invalid YAML{at}: {getattr(err, 'problem', None) or err}"
        ) from None


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


def type_name(annotation: Any) -> str:
    """A setting's type as a reader would write it: ``int``, ``str | None``, ``'a' | 'b'``,
    ``list[int]`` (``Annotated`` metadata left out)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return (
            f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
        )
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
