"""Shared by the configuration files (monitor, rules): reading YAML, durations such as
'250ms', '30s', '1.5m', '1h' or '1d', and readable validation errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object) -> int:
    """A duration in milliseconds; ValueError with an example of the format otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"{value!r} is not a duration: use e.g. 250ms, 30s, 5m, 1h or 1d")


def read_mapping(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``error`` naming the file and the problem otherwise."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def describe(exc: ValidationError, header: str) -> str:
    """A pydantic error as one line per problem: where, and what is wrong."""
    lines = [header]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
