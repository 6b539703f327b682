"""Durations in configuration files: '250ms', '30s', '1.5m', '1h', '1d' or milliseconds."""

from __future__ import annotations

import re

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
