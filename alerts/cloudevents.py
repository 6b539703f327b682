"""Alert records (``driftline.alert/v1``) and retrain events (CloudEvents 1.0, structured
JSON). Both are deterministic functions of the report and the rule: a redelivered report
yields byte-identical records with the same ids, so consumers can deduplicate."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alerts.rules import Rule

RETRAIN_TYPE = "io.driftline.retrain.requested"
ALERT_SCHEMA = "driftline.alert/v1"
#: uuid5 namespace of every id driftline derives
NAMESPACE = uuid.UUID("6f1d2a8e-4b7c-5d3e-9a10-d71f7e11e000")


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts)))


def alert_record(
    *,
    state: str,
    rule: Rule,
    report: dict[str, Any],
    feature: str | None,
    value: float,
    threshold: float,
    episode_start_ms: int | None,
) -> dict[str, Any]:
    model, version = report["model"], report["model_version"]
    start, end = report["window_start_ms"], report["window_end_ms"]
    return {
        "schema": ALERT_SCHEMA,
        "alert_id": derived_id("alert", model, version, rule.name, feature or "", start, state),
        "state": state,
        "rule": rule.name,
        "severity": rule.severity,
        "action": rule.action,
        "model": model,
        "model_version": version,
        "feature": feature,
        "metric": rule.metric,
        "op": rule.op,
        "value": value,
        "threshold": threshold,
        "window_start": report["window_start"],
        "window_end": report["window_end"],
        "window_start_ms": start,
        "window_end_ms": end,
        "episode_start_ms": episode_start_ms,
        "report_id": report["report_id"],
    }


def retrain_event(
    source: str, rule: Rule, report: dict[str, Any], breaches: list[dict[str, Any]]
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event asking for the model to be retrained."""
    model, version = report["model"], report["model_version"]
    start, end = report["window_start_ms"], report["window_end_ms"]
    return {
        "specversion": "1.0",
        "type": RETRAIN_TYPE,
        "source": source,
        "id": derived_id("retrain", model, version, rule.name, start, end),
        "time": report["window_end"],
        "subject": model,
        "datacontenttype": "application/json",
        "data": {
            "model": model,
            "model_version": version,
            "model_uri": report.get("model_uri"),
            "reference": report.get("reference"),
            "run_id": report.get("run_id"),
            "reference_uri": report.get("reference_uri"),
            "rule": rule.name,
            "severity": rule.severity,
            "window": {"start": report["window_start"], "end": report["window_end"]},
            "report_id": report["report_id"],
            "breaches": [
                {
                    "feature": b["feature"],
                    "metric": b["metric"],
                    "value": b["value"],
                    "threshold": b["threshold"],
                }
                for b in breaches
            ],
        },
    }
