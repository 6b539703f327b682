"""The four packages import from this install (``stream`` and ``alerts`` are generic
names that another distribution could shadow)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import drift_core


@pytest.mark.parametrize("name", ["drift_core", "stream", "alerts", "serving_hooks"])
def test_package_comes_from_driftline(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    location = Path(module.__file__).resolve().parent
    assert location.parent == Path(drift_core.__file__).resolve().parent.parent
    if os.environ.get("DRIFTLINE_EXPECT_INSTALLED") == "1":  # set by `make test`
        assert "site-packages" in location.parts, location
    errors = importlib.import_module(f"{name}.errors")
    assert issubclass(next(v for k, v in vars(errors).items() if k.endswith("Error")), Exception)


def test_error_hierarchy_has_one_root() -> None:
    from alerts.errors import AlertsError
    from serving_hooks.errors import ServingHooksError
    from stream.errors import StreamError

    for cls in (StreamError, AlertsError, ServingHooksError, drift_core.InvalidInputError):
        assert issubclass(cls, drift_core.DriftlineError)


def test_stat_registry_directions() -> None:
    from drift_core import stats

    assert stats.breached("ks", 0.2, 0.15)
    assert not stats.breached("ks", 0.1, 0.15)
    assert stats.breached("ks_pvalue", 0.001, 0.01)
    assert not stats.breached("psi", float("nan"), 0.2)
    assert "psi" in stats.names()
    with pytest.raises(drift_core.InvalidInputError, match="unknown statistic 'nope'; known:"):
        stats.get("nope")
