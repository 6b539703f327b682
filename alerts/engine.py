"""The rule engine: WindowReports in, alert transitions and retrain events out.

Plain code (no Kafka, no Faust) so the stream worker and the replay CLI share it. State is
kept per (rule, model, model version, feature) key:

- a window where the figure breaches the threshold (with at least ``min_samples`` values)
  counts one more consecutive breach; after ``for`` of them the key fires, unless it fired
  less than ``cooldown`` ago (then it waits, pending, until the cooldown is over);
- a window that does not breach resolves a firing key and resets the count;
- a window without enough values (or without the figure) changes nothing.

Each key that starts firing yields one ``firing`` alert, and one ``resolved`` alert when it
ends: one episode, two alerts. Rules whose action is ``retrain`` turn the keys that start
firing in a window into one retrain event for that (model, version, rule, window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from alerts.cloudevents import alert_record, retrain_event
from alerts.rules import Rule, RuleSet

Key = tuple[str, str, str, str]  # rule, model, version, feature ("" for model metrics)


class KeyState(msgspec.Struct):
    consecutive: int = 0
    firing: bool = False
    episode_start_ms: int | None = None
    last_fired_end_ms: int | None = None


@dataclass
class Evaluation:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    retrain: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Observation:
    feature: str
    value: float
    samples: int


def observations(rule: Rule, report: dict[str, Any]) -> list[Observation]:
    """The values a rule looks at in a report (features it selects, or the model figure)."""
    metrics = report.get("model_metrics") or {}
    rows = int(report.get("rows") or 0)
    if rule.per_feature:
        out = []
        for name, figures in (report.get("features") or {}).items():
            if not rule.selects(name):
                continue
            figure = figures.get(rule.metric)
            if figure is not None:
                out.append(Observation(name, float(figure), int(figures.get("n") or 0)))
        return out
    value: float | None = None
    samples = rows
    if rule.metric == "prediction_psi":
        value = (metrics.get("prediction") or {}).get("psi")
    elif rule.metric == "latency_p99_ms":
        latency = metrics.get("latency_ms") or {}
        value, samples = latency.get("p99"), int(latency.get("count") or 0)
    elif rule.metric == "error_rate":
        value = metrics.get("error_rate")
    elif rule.on_quality:
        value = metrics.get(rule.metric)
        samples = int(metrics.get("labelled") or 0)
    elif rule.metric == "share_of_drifted_features":
        features = report.get("features") or {}
        eligible = [f for f in features.values() if f.get("psi") is not None]
        if eligible:
            value = sum(1 for f in eligible if f["psi"] > rule.drift_psi) / len(eligible)
    return [] if value is None else [Observation("", float(value), samples)]


class RuleEngine:
    """Evaluates rules over a model's WindowReports in window order."""

    def __init__(self, rules: RuleSet, source: str = "driftline") -> None:
        self.rules = rules
        self.source = source
        self._state: dict[Key, KeyState] = {}

    def evaluate(self, report: dict[str, Any]) -> Evaluation:
        out = Evaluation()
        model, version = str(report["model"]), str(report["model_version"])
        start = int(report["window_start_ms"])
        for rule in self.rules.rules:
            if rule.on_quality or not rule.applies_to(model):
                continue  # quality reports have their own engine
            started: list[dict[str, Any]] = []
            for obs in observations(rule, report):
                enabled, threshold, for_, min_samples = rule.settings(model, obs.feature or None)
                if not enabled or obs.samples < min_samples:
                    continue
                key = (rule.name, model, version, obs.feature)
                state = self._state.setdefault(key, KeyState())
                breach = rule.breached(obs.value, threshold)
                alert = None
                if breach:
                    state.consecutive += 1
                    cooled = (
                        state.last_fired_end_ms is None
                        or start >= state.last_fired_end_ms + rule.cooldown
                    )
                    if not state.firing and state.consecutive >= for_ and cooled:
                        state.firing = True
                        state.episode_start_ms = start
                        alert = "firing"
                else:
                    if state.firing:
                        alert = "resolved"
                        state.last_fired_end_ms = start
                    state.firing = False
                    state.consecutive = 0
                if alert is None:
                    continue
                record = alert_record(
                    state=alert,
                    rule=rule,
                    report=report,
                    feature=obs.feature or None,
                    value=obs.value,
                    threshold=threshold,
                    episode_start_ms=state.episode_start_ms,
                )
                out.alerts.append(record)
                if alert == "firing":
                    started.append(record)
            if started and rule.action == "retrain":
                out.retrain.append(retrain_event(self.source, rule, report, started))
        return out

    def snapshot(self, model: str | None = None) -> bytes:
        """State as bytes (of one model, or all), to keep beside the window engine's."""
        return msgspec.msgpack.encode(
            [[list(k), s] for k, s in sorted(self._state.items()) if model in (None, k[1])]
        )

    def restore(self, data: bytes, model: str | None = None) -> None:
        """Replaces the state (of one model, or all) with a snapshot."""
        items = msgspec.msgpack.decode(data, type=list[tuple[list[str], KeyState]])
        if model is None:
            self._state = {}
        else:
            self.forget(model)
        self._state.update({(k[0], k[1], k[2], k[3]): s for k, s in items})

    def forget(self, model: str) -> None:
        """Drops a model's keys (its partition went to another worker)."""
        self._state = {k: s for k, s in self._state.items() if k[1] != model}

    def firing(self) -> list[Key]:
        return sorted(k for k, s in self._state.items() if s.firing)

    def __len__(self) -> int:  # keys tracked
        return len(self._state)


class QualityRuleEngine:
    """Rules over quality reports (``accuracy_drop``, ``auc_drop``, ``mae_increase``).

    A window's quality fills in as its labels arrive and is reported again each time, in
    any window order; so each window is judged on its own: once it has ``min_samples``
    labelled predictions, a breach makes it fire (one alert, one retrain event for a
    ``retrain`` rule) and a later report of the same window without the breach resolves
    it. Ids are derived from the window, so a report seen again changes nothing.
    """

    def __init__(self, rules: RuleSet, source: str = "driftline") -> None:
        self.rules = [r for r in rules.rules if r.on_quality]
        self.source = source
        self._firing: dict[tuple[str, str, str, int], bool] = {}

    def evaluate(self, report: dict[str, Any]) -> Evaluation:
        out = Evaluation()
        model, version = str(report["model"]), str(report["model_version"])
        start = int(report["window_start_ms"])
        for rule in self.rules:
            if not rule.applies_to(model):
                continue
            for obs in observations(rule, report):
                enabled, threshold, _, min_samples = rule.settings(model, None)
                if not enabled or obs.samples < min_samples:
                    continue
                key = (rule.name, model, version, start)
                was = self._firing.get(key, False)
                now = rule.breached(obs.value, threshold)
                self._firing[key] = now
                if now == was:
                    continue
                record = alert_record(
                    state="firing" if now else "resolved",
                    rule=rule,
                    report=report,
                    feature=None,
                    value=obs.value,
                    threshold=threshold,
                    episode_start_ms=start,
                )
                out.alerts.append(record)
                if now and rule.action == "retrain":
                    out.retrain.append(retrain_event(self.source, rule, report, [record]))
        return out

    def expire(self, model: str, before_start_ms: int) -> None:
        self._firing = {
            k: v for k, v in self._firing.items() if k[1] != model or k[3] >= before_start_ms
        }

    def snapshot(self, model: str) -> bytes:
        return msgspec.msgpack.encode(
            [[*k, v] for k, v in sorted(self._firing.items()) if k[1] == model]
        )

    def restore(self, data: bytes, model: str) -> None:
        self.forget(model)
        for rule, m, version, start, firing in msgspec.msgpack.decode(
            data, type=list[tuple[str, str, str, int, bool]]
        ):
            self._firing[(rule, m, version, start)] = firing

    def forget(self, model: str) -> None:
        self._firing = {k: v for k, v in self._firing.items() if k[1] != model}


def evaluate_all(rules: RuleSet, reports: list[dict[str, Any]]) -> Evaluation:
    """Runs a fresh engine over reports sorted by window (what replay does)."""
    engine = RuleEngine(rules)
    out = Evaluation()
    for report in sorted(reports, key=lambda r: (r["window_start_ms"], r["model"])):
        ev = engine.evaluate(report)
        out.alerts.extend(ev.alerts)
        out.retrain.extend(ev.retrain)
    return out
