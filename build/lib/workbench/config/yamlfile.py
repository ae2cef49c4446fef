"""Reading a small YAML data file (prompts, attack suites) with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


def read_yaml(path: Path, what: str) -> tuple[bytes, Any]:
    """``(raw bytes, parsed data)`` of ``path``; a missing, non-UTF-8 or malformed file is a
    ConfigError such as ``x.yaml: prompt file not found`` or ``x.yaml:3: malformed YAML: ...``."""
    try:
        raw = path.read_bytes()
        return raw, yaml.safe_load(raw.decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}{':' + str(mark.line + 1) if mark else ''}: malformed YAML: {getattr(exc, 'problem', exc)}") from None
