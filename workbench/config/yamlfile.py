"""YAML data files (experiments, prompts, attack suites, the price table) validated by pydantic,
with one-line errors naming the file, the line and the field.

Every file format the workbench reads is a :class:`StrictModel`: unknown keys are errors with a
"did you mean" suggestion, and :func:`validation_error` turns pydantic's first error into one
``ConfigError`` line such as ``x.yaml:12: grid.retrieval[1].method: unknown retrieval method ...``,
finding the line in the YAML node tree that :func:`parse_yaml` keeps next to the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..errors import ConfigError, did_you_mean

# The context key of field_error(). pydantic substitutes "{<key>}" in error messages with the
# context's value, so the key must be a name no message (a prompt placeholder, say) would contain.
_FIELD_KEY = "workbench_field_path"
M = TypeVar("M", bound=BaseModel)


def field_error(field: str | tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error raised by a model validator that belongs to one of its fields (or an unknown key):
    :func:`validation_error` appends ``field`` (a name, or a path such as ``("attacks", 1, "id")``)
    to the error's location, so the message names that field and its line."""
    return PydanticCustomError("field_error", message, {_FIELD_KEY: field})


class StrictModel(BaseModel):
    """Base of every validated file format: unknown keys are errors with a suggestion; immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra="forbid" message has no suggestion; this one names the closest key.
        if isinstance(data, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise field_error(str(key), f"unknown key {key!r}{did_you_mean(str(key), known)}; allowed: {', '.join(sorted(known))}")
        return data


def parse_yaml(text: str, path: Path, what: str | None = None) -> tuple[Any, yaml.Node | None]:
    """``(data, node tree)`` of YAML ``text`` read from ``path``, parsed once; the node tree gives
    :func:`validation_error` its line numbers. Malformed YAML is a ``ConfigError`` naming the line
    (and ``what`` the file is: ``x.yaml:3: cannot read the price table: malformed YAML: ...``)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        reading = f"cannot read the {what}: " if what else ""
        raise ConfigError(f"{where}: {reading}malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str) -> tuple[bytes, Any, yaml.Node | None]:
    """``(raw bytes, data, node tree)`` of the file ``path``; a missing, non-UTF-8 or malformed file
    is a ConfigError such as ``x.yaml: prompt file not found`` or
    ``x.yaml:3: cannot read the prompt file: malformed YAML: ...``."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: {what} is not UTF-8 text (byte {exc.start})") from None
    return (raw, *parse_yaml(text, path, what))


def yaml_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def format_loc(loc: tuple[Any, ...]) -> str:
    """``("grid", "retrieval", 1, "method")`` -> ``grid.retrieval[1].method``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_error(path: Path, err: ValidationError, root: yaml.Node | None) -> ConfigError:
    """pydantic's first error as one line: ``file:line: field.path: message (and N more)``."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if e["type"] == "field_error":
        field = e["ctx"][_FIELD_KEY]
        loc += tuple(field) if isinstance(field, (tuple, list)) else (field,)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "extra_forbidden":
        msg = "unknown key"
    line = yaml_line(root, loc)
    where = f"{path}:{line}" if line else str(path)
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return ConfigError(f"{where}: {format_loc(loc)}: {msg}{more}")


def load_yaml_model(model: type[M], path: Path, what: str, shape: str, context: dict | None = None) -> tuple[bytes, M]:
    """``(raw bytes, validated model)`` of the YAML mapping in ``path``; ``shape`` completes the
    error for a file that is not a mapping (``x.yaml: expected a mapping <shape>``) and ``context``
    reaches the model's validators (a prompt's allowed placeholders)."""
    raw, data, root = read_yaml(path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping {shape}")
    try:
        return raw, model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(path, exc, root) from None
