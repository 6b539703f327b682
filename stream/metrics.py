"""Prometheus exposition of the worker (prometheus-client), in base units."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_FEATURE_FIGURES = (
    "psi",
    "ks",
    "ks_pvalue",
    "missing_share",
    "chi2_pvalue",
    "js",
    "wasserstein_norm",
)


class WorkerMetrics:
    """Counters and gauges of one worker, in its own registry (tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("driftline_events", "Valid events consumed", ["model"], registry=r)
        self.invalid = Counter(
            "driftline_invalid_events", "Messages or events sent to the DLQ", ["reason"], registry=r
        )
        self.late = Counter(
            "driftline_late_events", "Events for windows already closed", ["model"], registry=r
        )
        self.duplicates = Counter(
            "driftline_duplicate_events",
            "Redelivered events already in the state (skipped)",
            ["model"],
            registry=r,
        )
        self.redelivered = Counter(
            "driftline_redelivered_messages",
            "Messages handed again after a rebalance, already applied (skipped)",
            registry=r,
        )
        self.gaps = Counter(
            "driftline_offset_gaps",
            "Messages that arrived after a hole in their partition's offsets (re-read)",
            registry=r,
        )
        self.outcomes = Counter(
            "driftline_outcomes",
            "Outcome messages by result: joined, duplicate, expired, unknown_event, "
            "label_mismatch, redelivered, unknown_model or a decoding reason; waiting "
            "counts those that waited for their prediction (then counted again as the rest)",
            ["model", "result"],
            registry=r,
        )
        self.quality = Gauge(
            "driftline_quality",
            "Quality of the latest window reported (labelled predictions so far): accuracy, "
            "precision, recall, f1, auc, mae, rmse, their drops against the reference, "
            "labelled and labelled_share",
            ["model", "model_version", "figure"],
            registry=r,
        )
        self.alerts = Counter(
            "driftline_alerts", "Alert transitions", ["rule", "state"], registry=r
        )
        self.retrain = Counter(
            "driftline_retrain_events", "Retrain events raised", ["model"], registry=r
        )
        self.windows_closed = Counter(
            "driftline_windows_closed", "Windows closed and reported", ["model"], registry=r
        )
        self.feature = Gauge(
            "driftline_feature_drift",
            "Drift figure of a feature in the last closed window",
            ["model", "model_version", "feature", "figure"],
            registry=r,
        )
        self.prediction = Gauge(
            "driftline_prediction_drift",
            "Drift figure of the predictions in the last closed window",
            ["model", "model_version", "figure"],
            registry=r,
        )
        self.latency = Gauge(
            "driftline_latency_seconds",
            "Serving latency quantile in the last closed window",
            ["model", "model_version", "quantile"],
            registry=r,
        )
        self.error_rate = Gauge(
            "driftline_error_rate",
            "Error share in the last closed window",
            ["model", "model_version"],
            registry=r,
        )
        self.rows = Gauge(
            "driftline_window_rows",
            "Events in the last closed window",
            ["model", "model_version"],
            registry=r,
        )
        self.lag = Gauge(
            "driftline_processing_lag_seconds",
            "Wall clock minus the latest event time processed",
            ["model"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "driftline_batch_duration_seconds",
            "Time to process one batch of events",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_quality(self, report: dict[str, Any]) -> None:
        model, version = report["model"], report["model_version"]
        figures = {
            **report["quality"],
            **report["model_metrics"],
            "labelled_share": report.get("labelled_share"),
        }
        for figure, value in figures.items():
            if value is not None:
                self.quality.labels(model, version, figure).set(value)

    def observe_report(self, report: dict[str, Any]) -> None:
        model, version = report["model"], report["model_version"]
        self.windows_closed.labels(model).inc()
        self.rows.labels(model, version).set(report["rows"])
        for feature, figures in report["features"].items():
            for figure in _FEATURE_FIGURES:
                value = figures.get(figure)
                if value is not None:
                    self.feature.labels(model, version, feature, figure).set(value)
        metrics = report["model_metrics"]
        prediction = metrics.get("prediction") or {}
        for figure in ("psi", "ks", "chi2_pvalue", "js"):
            if prediction.get(figure) is not None:
                self.prediction.labels(model, version, figure).set(prediction[figure])
        for q in ("p50", "p95", "p99"):
            value = metrics["latency_ms"].get(q)
            if value is not None:
                self.latency.labels(model, version, f"0.{q[1:]}").set(value / 1000.0)
        if metrics.get("error_rate") is not None:
            self.error_rate.labels(model, version).set(metrics["error_rate"])
