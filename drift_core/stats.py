"""The drift statistics by name, with the direction in which each one signals drift.

Rules read the same for every metric: ``breached(name, value, threshold)`` is true when
the value is on the drifting side of the threshold (KS above, KS p-value below, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from drift_core.errors import InvalidInputError

Direction = Literal["above", "below"]


@dataclass(frozen=True, slots=True)
class Statistic:
    """One figure of a window report and how to read it."""

    name: str
    kinds: frozenset[str]
    direction: Direction
    description: str


_STATISTICS: dict[str, Statistic] = {}


def _register(name: str, kinds: set[str], direction: Direction, description: str) -> None:
    _STATISTICS[name] = Statistic(name, frozenset(kinds), direction, description)


_BOTH = {"numeric", "categorical"}
_register("ks", {"numeric"}, "above", "two-sample Kolmogorov-Smirnov statistic (effect size)")
_register("ks_pvalue", {"numeric"}, "below", "asymptotic KS p-value (as scipy's ks_2samp asymp)")
_register("psi", _BOTH, "above", "population stability index on reference-quantile bins")
_register("wasserstein", {"numeric"}, "above", "Wasserstein-1 distance, in feature units")
_register(
    "wasserstein_norm", {"numeric"}, "above", "Wasserstein-1 over the reference std deviation"
)
_register("chi2_pvalue", {"categorical"}, "below", "chi-square homogeneity p-value")
_register("js", {"categorical"}, "above", "Jensen-Shannon distance, base 2, in [0, 1]")
_register("unseen_share", {"categorical"}, "above", "share of values never seen in the reference")
_register("missing_share", _BOTH, "above", "share of missing values in the window")
_register(
    "missing_pvalue", _BOTH, "below", "two-proportion test of window vs reference missing share"
)


def get(name: str) -> Statistic:
    """The statistic called ``name``; raises InvalidInputError listing the known names."""
    try:
        return _STATISTICS[name]
    except KeyError:
        known = ", ".join(sorted(_STATISTICS))
        raise InvalidInputError(f"unknown statistic {name!r}; known: {known}") from None


def names() -> list[str]:
    """Every registered statistic name, sorted."""
    return sorted(_STATISTICS)


def breached(name: str, value: float, threshold: float) -> bool:
    """Whether ``value`` is on the drifting side of ``threshold`` (NaN never breaches)."""
    if math.isnan(value):
        return False
    if get(name).direction == "above":
        return value > threshold
    return value < threshold
