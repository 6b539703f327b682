"""docs/operator.md's metrics reference lists exactly the metrics the code registers."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from alerts.dispatcher import DispatcherMetrics
from serving_hooks.publisher import HookMetrics
from stream.metrics import WorkerMetrics

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "operator.md"


def registered() -> dict[str, str]:
    """Exposed name -> type of every metric of the worker, the dispatcher and the hook."""
    names: dict[str, str] = {}
    for make in (WorkerMetrics, DispatcherMetrics, HookMetrics):
        registry = CollectorRegistry()
        make(registry)
        for family in registry.collect():
            suffix = "_total" if family.type == "counter" else ""
            names[family.name + suffix] = family.type
    return names


def test_the_metrics_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `(driftline_\w+)` \| (\w+) \|", GUIDE.read_text(), re.MULTILINE)
    documented = dict(rows)
    assert len(documented) == len(rows), "a metric is listed twice"
    assert documented == registered()
