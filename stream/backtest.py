"""Backtest scoring: a replay's alerts against the times drift really happened.

``driftline replay ... --incidents FILE`` scores every rule against a list of incidents
(model, optional feature, start, end); ``--sweep RULE[=LO:HI:STEP]`` evaluates one rule
again at other thresholds over the window reports the replay already made (the window
engine does not run again), so a team can pick a threshold for a target alert rate.

Matching. An alert's time is the end of the window it fired on: when the stream could
have raised it. A firing alert matches an incident when it is for the incident's model
(and feature, when the incident names one; an incident without a feature takes alerts
on any feature and model-level alerts) and its window ends after the incident starts and
no later than ``grace`` after it ends (``start < window end <= end + grace``; grace
defaults to one window). An incident is caught by a rule when at least one firing alert
of the rule matches it; the detection delay is the earliest matching window end minus
the incident start. A firing alert that matches no incident is a false alarm. Each rule
is scored on the incidents it could catch (the rule applies to the model and, for an
incident on a feature, watches that feature); ``overall`` takes every incident and
every alert, with each incident's earliest detection by any rule.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alerts.engine import QualityRuleEngine, RuleEngine, observations
from alerts.rules import Rule, RuleSet
from stream.configfile import parse_duration
from stream.events import parse_ts
from stream.replay import ReplayError, ReplayResult

DAY_MS = 86_400_000
COLUMNS = ("model", "feature", "start", "end", "note")
REQUIRED = ("model", "start", "end")
#: ``--sweep RULE`` without a range: the rule's threshold times these
DEFAULT_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
MAX_SWEEP_POINTS = 1000


class IncidentsError(ReplayError):
    """An incidents file or a ``--sweep`` that cannot be used; says where and why."""


@dataclass(frozen=True, slots=True)
class Incident:
    """A time when drift really happened, for a model (and one of its features)."""

    model: str
    feature: str | None
    start_ms: int
    end_ms: int
    note: str = ""

    def matches(self, alert: dict[str, Any], grace_ms: int) -> bool:
        if alert["model"] != self.model:
            return False
        if self.feature is not None and alert["feature"] != self.feature:
            return False
        return self.start_ms < int(alert["window_end_ms"]) <= self.end_ms + grace_ms

    def delay_ms(self, alert: dict[str, Any]) -> int:
        return int(alert["window_end_ms"]) - self.start_ms


# --- the incidents file ------------------------------------------------------------------


def load_incidents(path: str | Path) -> list[Incident]:
    """Reads incidents from YAML, JSON or CSV (by extension); see the module docs and the
    README for the format. Errors name the file and the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except OSError as exc:
        raise IncidentsError(f"cannot read incidents {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path, text)
    elif suffix in (".yaml", ".yml", ".json"):
        rows = _document_rows(path, text, suffix)
    else:
        raise IncidentsError(f"{path}: unknown format {suffix!r}; use .yaml, .json or .csv")
    incidents = [_incident(path, where, row) for where, row in rows]
    if not incidents:
        raise IncidentsError(f"{path}: no incidents in the file")
    return incidents


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise IncidentsError(f"{path}: empty file; the first line names the columns")
    _check_columns(path, "the header", header)
    reader.fieldnames = header
    rows = []
    for number, row in enumerate(reader, start=1):
        if None in row:
            raise IncidentsError(
                f"{path} row {number} (line {reader.line_num}): more values than columns"
            )
        rows.append((f"row {number} (line {reader.line_num})", row))
    return rows


def _document_rows(path: Path, text: str, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        raw: Any = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if suffix == ".json" else "YAML"
        raise IncidentsError(f"{path} is not valid {kind}: {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"incidents"}:
        raw = raw["incidents"]
    if not isinstance(raw, list):
        raise IncidentsError(
            f"{path}: expected a list of incidents (or a mapping with only `incidents:`), "
            f"got {type(raw).__name__}"
        )
    rows = []
    for number, row in enumerate(raw, start=1):
        if not isinstance(row, dict):
            raise IncidentsError(
                f"{path} row {number}: expected a mapping with {', '.join(REQUIRED)}, "
                f"got {type(row).__name__}"
            )
        _check_columns(path, f"row {number}", [str(k) for k in row])
        rows.append((f"row {number}", row))
    return rows


def _check_columns(path: Path, where: str, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise IncidentsError(
            f"{path} {where}: unknown column {unknown[0]!r}; the columns are "
            f"{', '.join(COLUMNS)} (feature and note optional)"
        )
    for name in REQUIRED:
        if name not in names:
            raise IncidentsError(f"{path} {where}: missing column {name!r}")


def _incident(path: Path, where: str, row: dict[str, Any]) -> Incident:
    model = row.get("model")
    if model is None or not str(model).strip():
        raise IncidentsError(f"{path} {where}: `model` is empty")
    feature = row.get("feature")
    feature = None if feature is None or not str(feature).strip() else str(feature).strip()
    start = _time(path, where, "start", row.get("start"))
    end = _time(path, where, "end", row.get("end"))
    if end < start:
        raise IncidentsError(f"{path} {where}: end {_iso(end)} is before start {_iso(start)}")
    note = row.get("note")
    return Incident(str(model).strip(), feature, start, end, "" if note is None else str(note))


def _time(path: Path, where: str, name: str, value: Any) -> int:
    """RFC 3339 text (YAML timestamps too) or epoch milliseconds."""
    ms = _epoch_ms(path, where, name, value)
    try:
        _iso(ms)
    except (ValueError, OverflowError, OSError):
        raise IncidentsError(f"{path} {where}: `{name}` {value!r} is out of range") from None
    return ms


def _epoch_ms(path: Path, where: str, name: str, value: Any) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IncidentsError(f"{path} {where}: `{name}` is empty")
    problem = f"{path} {where}: `{name}` {value!r} is not a time"
    hint = "use RFC 3339 with a time zone (2026-11-22T10:00:00Z) or epoch milliseconds"
    if isinstance(value, bool):
        raise IncidentsError(f"{problem}; {hint}")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise IncidentsError(f"{problem}: it has no time zone; {hint}")
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        raise IncidentsError(f"{problem}: a date without a time; {hint}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    try:
        return int(text) if text.lstrip("-").isdigit() else parse_ts(text)
    except (ValueError, OverflowError):
        raise IncidentsError(f"{problem}: {hint}") from None


# --- scoring -----------------------------------------------------------------------------


@dataclass
class Score:
    """Counts for one rule (or all): incidents in scope, caught, alerts, false alarms."""

    incidents: int = 0
    caught: int = 0
    alerts: int = 0
    false_alarms: int = 0
    delays_ms: list[int] = field(default_factory=list)

    @property
    def missed(self) -> int:
        return self.incidents - self.caught

    def to_json(self, days: float) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "caught": self.caught,
            "missed": self.missed,
            "alerts": self.alerts,
            "false_alarms": self.false_alarms,
            "false_alarms_per_day": _per_day(self.false_alarms, days),
            "precision": _share(self.alerts - self.false_alarms, self.alerts),
            "recall": _share(self.caught, self.incidents),
            "delay_ms": {
                "median": _median(self.delays_ms),
                "max": max(self.delays_ms) if self.delays_ms else None,
            },
        }


def covered_days(result: ReplayResult) -> float:
    """Event time covered by the replay's windows (first start to last end), in days."""
    if not result.windows:
        return 0.0
    first = min(int(w["window_start_ms"]) for w in result.windows)
    last = max(int(w["window_end_ms"]) for w in result.windows)
    return (last - first) / DAY_MS


def in_scope(rule: Rule, incident: Incident) -> bool:
    """Whether the rule could catch the incident at all."""
    if not rule.applies_to(incident.model):
        return False
    if incident.feature is None:
        return rule.settings(incident.model, None)[0]
    return (
        rule.per_feature
        and rule.selects(incident.feature)
        and rule.settings(incident.model, incident.feature)[0]
    )


def score_alerts(
    rule: Rule, alerts: Iterable[dict[str, Any]], incidents: Sequence[Incident], grace_ms: int
) -> tuple[Score, dict[int, tuple[int, dict[str, Any]]]]:
    """One rule's firing alerts against the incidents: the score, and for each caught
    incident (by index) the delay and the first alert that caught it."""
    score = Score(incidents=sum(1 for i in incidents if in_scope(rule, i)))
    first: dict[int, tuple[int, dict[str, Any]]] = {}
    for alert in alerts:
        if alert["state"] != "firing" or alert["rule"] != rule.name:
            continue
        score.alerts += 1
        matched = False
        for index, incident in enumerate(incidents):
            if incident.matches(alert, grace_ms):
                matched = True
                delay = incident.delay_ms(alert)
                if index not in first or delay < first[index][0]:
                    first[index] = (delay, alert)
        if not matched:
            score.false_alarms += 1
    score.caught = len(first)
    score.delays_ms = [delay for delay, _ in first.values()]
    return score, first


def score(
    result: ReplayResult, rules: RuleSet, incidents: Sequence[Incident], grace_ms: int
) -> dict[str, Any]:
    """The ``scores`` document: per rule, overall, and per incident."""
    days = covered_days(result)
    overall = Score(incidents=len(incidents))
    per_rule = []
    caught_by: list[list[dict[str, Any]]] = [[] for _ in incidents]
    for rule in rules.rules:
        rule_score, first = score_alerts(rule, result.alerts, incidents, grace_ms)
        per_rule.append({"rule": rule.name, **rule_score.to_json(days)})
        overall.alerts += rule_score.alerts
        overall.false_alarms += rule_score.false_alarms
        for index, (delay, alert) in first.items():
            caught_by[index].append(
                {
                    "rule": rule.name,
                    "delay_ms": delay,
                    "alert_id": alert["alert_id"],
                    "window_end": alert["window_end"],
                }
            )
    details = []
    for incident, found in zip(incidents, caught_by, strict=True):
        earliest: int | None = min((int(c["delay_ms"]) for c in found), default=None)
        if earliest is not None:
            overall.caught += 1
            overall.delays_ms.append(earliest)
        details.append(
            {
                "model": incident.model,
                "feature": incident.feature,
                "start": _iso(incident.start_ms),
                "end": _iso(incident.end_ms),
                "start_ms": incident.start_ms,
                "end_ms": incident.end_ms,
                "note": incident.note,
                "delay_ms": earliest,
                "caught_by": found,
            }
        )
    return {
        "grace_ms": grace_ms,
        "days": days,
        "rules": per_rule,
        "overall": overall.to_json(days),
        "incidents": details,
    }


# --- threshold sweeps --------------------------------------------------------------------


def parse_sweep(text: str, rules: RuleSet) -> tuple[Rule, list[float] | None]:
    """``RULE=LO:HI:STEP`` -> (the rule, its thresholds); ``RULE`` -> (the rule, None):
    the default grid, see :func:`default_grid`."""
    name, sep, grid = text.partition("=")
    rule = next((r for r in rules.rules if r.name == name.strip()), None)
    if rule is None:
        known = ", ".join(r.name for r in rules.rules)
        raise IncidentsError(f"--sweep {text!r}: no rule named {name.strip()!r} (rules: {known})")
    if not sep:
        return rule, None
    parts = grid.split(":")
    try:
        lo, hi, step = (float(p) for p in parts)
    except ValueError:
        raise IncidentsError(
            f"--sweep {text!r}: use RULE=LO:HI:STEP, e.g. {name}=0.1:0.5:0.05"
        ) from None
    if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo:
        raise IncidentsError(f"--sweep {text!r}: need finite LO <= HI and STEP > 0")
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > MAX_SWEEP_POINTS:
        raise IncidentsError(f"--sweep {text!r}: {count} thresholds; at most {MAX_SWEEP_POINTS}")
    return rule, [_round(lo + i * step) for i in range(count)]


def default_grid(rule: Rule, result: ReplayResult) -> list[float]:
    """The rule's threshold times 0.25 ... 4; for a threshold of 0, the deciles of the
    values the rule saw in the replay."""
    if rule.threshold != 0:
        return sorted({_round(rule.threshold * f) for f in DEFAULT_FACTORS})
    values = sorted(
        obs.value
        for report in _reports(rule, result)
        if rule.applies_to(str(report["model"]))
        for obs in observations(rule, report)
        if math.isfinite(obs.value)
    )
    if not values:
        return [0.0]
    return sorted({_round(values[round(q * (len(values) - 1) / 10)]) for q in range(11)})


def rule_alerts(rule: Rule, result: ReplayResult) -> list[dict[str, Any]]:
    """The alerts one rule gives over the replay's reports, evaluated again in the order
    the replay evaluated them (the same engines, so the same alerts a full replay with
    this rule would give)."""
    single = RuleSet(rules=[rule])
    engine: RuleEngine | QualityRuleEngine = (
        QualityRuleEngine(single) if rule.on_quality else RuleEngine(single)
    )
    alerts: list[dict[str, Any]] = []
    for report in _reports(rule, result):
        alerts.extend(engine.evaluate(report).alerts)
    return alerts


def breaches(rule: Rule, result: ReplayResult) -> int:
    """(key, window) pairs whose figure breaches the threshold with enough samples: unlike
    alerts (one per episode), never more at a stricter threshold."""
    count = 0
    for report in _reports(rule, result):
        model = str(report["model"])
        if not rule.applies_to(model):
            continue
        for obs in observations(rule, report):
            enabled, threshold, _, min_samples = rule.settings(model, obs.feature or None)
            if enabled and obs.samples >= min_samples and rule.breached(obs.value, threshold):
                count += 1
    return count


def sweep(
    result: ReplayResult,
    rule: Rule,
    thresholds: Sequence[float] | None = None,
    incidents: Sequence[Incident] | None = None,
    grace_ms: int = 0,
) -> dict[str, Any]:
    """One rule at each threshold: alerts fired and per day, breaches, and with incidents
    the false alarms, caught and missed episodes and the delays."""
    days = covered_days(result)
    points = []
    for threshold in thresholds if thresholds is not None else default_grid(rule, result):
        changed = rule.model_copy(update={"threshold": threshold})
        alerts = rule_alerts(changed, result)
        fired = sum(1 for a in alerts if a["state"] == "firing")
        point: dict[str, Any] = {
            "threshold": threshold,
            "alerts": fired,
            "alerts_per_day": _per_day(fired, days),
            "breaches": breaches(changed, result),
        }
        if incidents is not None:
            point.update(score_alerts(changed, alerts, incidents, grace_ms)[0].to_json(days))
        points.append(point)
    return {
        "rule": rule.name,
        "metric": rule.metric,
        "op": rule.op,
        "threshold": rule.threshold,
        # overrides with a threshold of their own keep it at every point of the sweep
        "overridden": any(o.threshold is not None for o in rule.overrides),
        "points": points,
    }


# --- the replay command's flags ---------------------------------------------------------


@dataclass
class Backtest:
    """``--incidents``, ``--grace`` and ``--sweep``, checked before the replay runs."""

    incidents: list[Incident] | None
    incidents_path: str
    grace_ms: int
    sweeps: list[tuple[Rule, list[float] | None]]

    @classmethod
    def from_arguments(
        cls,
        incidents: str | None,
        sweeps: Sequence[str],
        grace: str | None,
        rules: RuleSet,
        window_ms: int,
    ) -> Backtest | None:
        """None when no scoring or sweep was asked for."""
        if grace is not None and incidents is None:
            raise IncidentsError("--grace goes with --incidents FILE")
        if incidents is None and not sweeps:
            return None
        try:
            grace_ms = window_ms if grace is None else parse_duration(grace)
        except ValueError as exc:
            raise IncidentsError(f"--grace: {exc}") from None
        return cls(
            load_incidents(incidents) if incidents is not None else None,
            incidents or "",
            grace_ms,
            [parse_sweep(text, rules) for text in sweeps],
        )

    def apply(self, result: ReplayResult, rules: RuleSet) -> str:
        """Scores and sweeps the replay (into ``result.scores`` / ``result.sweep``); the
        tables to print."""
        parts = []
        if self.incidents is not None:
            result.scores = score(result, rules, self.incidents, self.grace_ms)
            parts.append(scores_table(result.scores, self.incidents_path))
        if self.sweeps:
            result.sweep = [
                sweep(result, rule, grid, self.incidents, self.grace_ms)
                for rule, grid in self.sweeps
            ]
            parts.extend(sweep_table(doc) for doc in result.sweep)
        return "\n\n".join(parts)


# --- text output -------------------------------------------------------------------------


def scores_table(scores: dict[str, Any], source: str = "") -> str:
    count = len(scores["incidents"])
    head = (
        f"backtest against {count} incident{'s' * (count != 1)}"
        f"{f' ({source})' if source else ''}, grace {duration(scores['grace_ms'])}, "
        f"{scores['days']:.2f} days of event time"
    )
    lines = [
        head,
        f"{'rule':20} {'alerts':>6} {'caught':>6} {'missed':>6} {'false':>6} {'false/day':>9} "
        f"{'precision':>9} {'recall':>6} {'delay p50':>9} {'delay max':>9}",
    ]
    for name, s in [*((r["rule"], r) for r in scores["rules"]), ("all rules", scores["overall"])]:
        lines.append(
            f"{name[:20]:20} {s['alerts']:>6} {s['caught']:>6} {s['missed']:>6} "
            f"{s['false_alarms']:>6} {_num(s['false_alarms_per_day']):>9} "
            f"{_num(s['precision']):>9} {_num(s['recall']):>6} "
            f"{duration(s['delay_ms']['median']):>9} {duration(s['delay_ms']['max']):>9}"
        )
    missed = [i for i in scores["incidents"] if i["delay_ms"] is None]
    for i in missed:
        note = f"  ({i['note']})" if i["note"] else ""
        lines.append(
            f"  missed: {i['model']}/{i['feature'] or '*'} {i['start']} .. {i['end']}{note}"
        )
    return "\n".join(lines)


def sweep_table(doc: dict[str, Any]) -> str:
    scored = bool(doc["points"]) and "caught" in doc["points"][0]
    lines = [
        f"sweep of {doc['rule']} ({doc['metric']} {doc['op']} threshold; "
        f"now {doc['threshold']:g})"
        + ("; overrides with their own threshold keep it" if doc["overridden"] else ""),
        f"{'threshold':>10} {'alerts':>6} {'alerts/day':>10}"
        + (f" {'false/day':>9} {'caught':>6} {'missed':>6} {'delay p50':>9}" if scored else ""),
    ]
    for p in doc["points"]:
        line = f"{p['threshold']:>10g} {p['alerts']:>6} {_num(p['alerts_per_day']):>10}"
        if scored:
            line += (
                f" {_num(p['false_alarms_per_day']):>9} {p['caught']:>6} {p['missed']:>6}"
                f" {duration(p['delay_ms']['median']):>9}"
            )
        lines.append(line)
    return "\n".join(lines)


def duration(ms: float | None) -> str:
    """45m, 1h30m, 2d3h; '-' for None."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:g}ms"
    seconds = round(ms / 1000)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{v}{u}" for v, u in parts if v)
    return text or "0s"


# --- helpers -----------------------------------------------------------------------------


def _reports(rule: Rule, result: ReplayResult) -> list[dict[str, Any]]:
    return result.quality if rule.on_quality else result.windows


def _per_day(count: int, days: float) -> float | None:
    return count / days if days > 0 else None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _round(value: float) -> float:
    return float(f"{value:.10g}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
