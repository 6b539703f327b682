"""Turning what serving code hands over into values the event contract accepts.

Features are numbers, strings or null, and so is a prediction. Serving code hands over
NumPy scalars, booleans, enums, decimals, pandas' missing markers and nested objects;
an event with any of these would be rejected by the worker (or, before the publisher's
fallback, not be encodable at all). The fast path, a plain float, int or str, costs one
type check.
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Mapping
from typing import Any

_SCALARS = (float, int, str)
_CONTAINERS = (Mapping, list, tuple, set, frozenset, bytes, bytearray)
# arrays, pydantic models, dataclasses: nested objects, not values
_CONTAINER_MARKS = ("__array__", "model_dump", "__dataclass_fields__")


def clean(value: Any) -> float | int | str | None:
    """One value as the contract wants it: bool -> 0/1, NumPy scalar -> its Python value,
    enum -> its value, Decimal -> float, pandas' NA/NaT -> None, any other scalar -> its
    text; containers (lists, dicts, arrays, nested models) -> None."""
    kind = type(value)
    if kind is float or kind is str or kind is int or value is None:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return int(value)
    if isinstance(value, enum.Enum):
        return clean(value.value)
    if kind.__name__ in ("NAType", "NaTType"):
        return None
    item = getattr(value, "item", None)  # NumPy scalars (np.float64 is also a float)
    if item is not None and getattr(value, "ndim", 0) == 0:
        try:
            return clean(item())
        except Exception:
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, _CONTAINERS) or any(hasattr(value, a) for a in _CONTAINER_MARKS):
        return None
    return str(value)


def clean_features(features: Mapping[str, Any]) -> dict[str, Any]:
    """The features as the contract wants them; containers (lists, nested objects) are left
    out rather than sent as junk categories."""
    out: dict[str, Any] = {}
    for name, value in features.items():
        kind = type(value)
        if kind is float or kind is str or kind is int or value is None:
            out[name] = value
            continue
        cleaned = clean(value)
        if cleaned is not None or _is_missing(value):
            out[str(name)] = cleaned
    return out


def _is_missing(value: Any) -> bool:
    return type(value).__name__ in ("NAType", "NaTType")
